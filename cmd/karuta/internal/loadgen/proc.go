package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat. USER_HZ is
// 100 on every Linux architecture Go supports, whatever the kernel's HZ,
// and the C library's sysconf(_SC_CLK_TCK) answers it; a constant spares a
// cgo call.
const clockTick = 10 * time.Millisecond

// procSample is one reading of a process's resource use.
type procSample struct {
	// statCPU is utime+stime from /proc/PID/stat: every thread's, exited
	// ones included, in clock ticks.
	statCPU time.Duration
	// schedCPU sums the first field of /proc/PID/task/*/schedstat: the
	// nanoseconds each live thread has run. Zero if unavailable.
	schedCPU time.Duration
	// peakRSS is VmHWM from /proc/PID/status, in bytes.
	peakRSS uint64
}

// readProc samples process pid from the proc file system under root
// ("/proc"; tests pass a fixture directory).
func readProc(root string, pid int) (procSample, error) {
	var s procSample
	dir := filepath.Join(root, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	if s.statCPU, err = parseStat(b); err != nil {
		return s, fmt.Errorf("process %d: stat: %w", pid, err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	if s.peakRSS, err = parseStatusKB(b, "VmHWM"); err != nil {
		return s, fmt.Errorf("process %d: status: %w", pid, err)
	}
	// Threads may exit between the listing and the reads: skip those.
	tasks, _ := filepath.Glob(filepath.Join(dir, "task", "*", "schedstat"))
	for _, t := range tasks {
		if b, err := os.ReadFile(t); err == nil {
			if ns, err := parseSchedstat(b); err == nil {
				s.schedCPU += ns
			}
		}
	}
	return s, nil
}

// readProcs samples several processes, the nodes of a cluster on one
// host, and sums their CPU time and peak memory.
func readProcs(root string, pids []int) (procSample, error) {
	var sum procSample
	for _, pid := range pids {
		s, err := readProc(root, pid)
		if err != nil {
			return sum, err
		}
		sum.statCPU += s.statCPU
		sum.schedCPU += s.schedCPU
		sum.peakRSS += s.peakRSS
	}
	return sum, nil
}

// parseStat returns utime+stime of a /proc/PID/stat line. The command
// name, in parentheses, may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	// After the name: state (field 3), ..., utime (14), stime (15).
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, errors.New("too few fields")
	}
	utime, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// parseSchedstat returns the first field of a schedstat line: time spent
// running, in nanoseconds.
func parseSchedstat(b []byte) (time.Duration, error) {
	f := bytes.Fields(b)
	if len(f) == 0 {
		return 0, errors.New("empty schedstat")
	}
	ns, err := strconv.ParseUint(string(f[0]), 10, 63)
	return time.Duration(ns), err
}

// parseStatusKB returns the value of key ("VmHWM: 1234 kB") of a
// /proc/PID/status file, in bytes.
func parseStatusKB(b []byte, key string) (uint64, error) {
	for line := range bytes.Lines(b) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(name) != key {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("%s: unexpected %q", key, bytes.TrimSpace(rest))
		}
		kb, err := strconv.ParseUint(string(f[0]), 10, 54)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", key, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no %s line", key)
}

// cpuBetween returns the CPU time used between two samples and where it
// was read: schedstat's nanoseconds when both samples have them and the
// sum did not shrink (it does when a thread exits), else stat's ticks.
func cpuBetween(a, b procSample) (time.Duration, string) {
	if a.schedCPU > 0 && b.schedCPU >= a.schedCPU {
		return b.schedCPU - a.schedCPU, "schedstat"
	}
	return b.statCPU - a.statCPU, "stat"
}
