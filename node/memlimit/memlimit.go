// Package memlimit finds how much memory this process may use: the limit
// of its memory cgroup (v1 or v2), GOMEMLIMIT, or else the machine's
// memory, so that a node can size what it holds to fit.
package memlimit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// Limit is the memory a process may use and what set it.
type Limit struct {
	// Bytes is the limit; never zero.
	Bytes int64
	// Source says where it comes from: "cgroup v1 PATH", "cgroup v2 PATH",
	// "GOMEMLIMIT" or "physical memory".
	Source string
	// Cgroup is the cgroup limit, or 0 when none applies; the runtime's
	// memory limit is set from it (see RuntimeLimit).
	Cgroup int64
}

// Host is what Detect reads: the root of a file system holding /proc and
// /sys, and the Go runtime's memory limit (math.MaxInt64 when unset).
type Host struct {
	FS         fs.FS
	GoMemLimit int64
}

// ThisProcess describes the running process.
func ThisProcess() Host {
	return Host{FS: os.DirFS("/"), GoMemLimit: debug.SetMemoryLimit(-1)}
}

// Detect returns the least of the process's memory cgroup limit, its Go
// memory limit and the machine's memory. A source that cannot be read is
// left out; only when none can is an error returned.
func Detect(h Host) (Limit, error) {
	var lim Limit
	var errs []error
	take := func(b int64, source string) {
		if b > 0 && (lim.Bytes == 0 || b < lim.Bytes) {
			lim.Bytes, lim.Source = b, source
		}
	}
	if b, where, err := cgroupLimit(h.FS); err != nil {
		errs = append(errs, err)
	} else if b > 0 {
		lim.Cgroup = b
		take(b, where)
	}
	if h.GoMemLimit > 0 && h.GoMemLimit < math.MaxInt64 {
		take(h.GoMemLimit, "GOMEMLIMIT")
	}
	if b, err := physical(h.FS); err != nil {
		errs = append(errs, err)
	} else {
		take(b, "physical memory")
	}
	if lim.Bytes == 0 {
		return lim, fmt.Errorf("memlimit: no limit found: %w", errors.Join(errs...))
	}
	return lim, nil
}

// RuntimeLimit is the Go memory limit to set for a process in a cgroup of
// limit cgroup bytes that has no GOMEMLIMIT of its own: nine tenths of it,
// so the collector works harder before the kernel's OOM killer acts,
// leaving room for memory the runtime does not count (thread stacks,
// fragmentation, the kernel's socket buffers charged to the cgroup).
func RuntimeLimit(cgroup int64) int64 { return cgroup / 10 * 9 }

// unlimited is what cgroup v1 reports for no limit: the largest page
// multiple below 2^63. Anything this large means no limit.
const unlimited = math.MaxInt64 / 2

// cgroupLimit returns the memory limit of the process's cgroup, the least
// of its own and its ancestors' up to the hierarchy's mount, and the file
// that set it; 0 when there is none (or no memory cgroup at all).
func cgroupLimit(fsys fs.FS) (int64, string, error) {
	self, err := fs.ReadFile(fsys, "proc/self/cgroup")
	if err != nil {
		return 0, "", fmt.Errorf("memlimit: %w", err)
	}
	mounts, err := fs.ReadFile(fsys, "proc/self/mountinfo")
	if err != nil {
		return 0, "", fmt.Errorf("memlimit: %w", err)
	}
	v1Path, v2Path, hasV2 := parseCgroups(self)
	var best int64
	var where string
	for _, m := range parseMountinfo(mounts) {
		var rel string
		switch {
		case m.v1Memory && v1Path != "":
			rel = v1Path
		case m.v2 && hasV2:
			rel = v2Path
		default:
			continue
		}
		dir, ok := cgroupDir(m, rel)
		if !ok {
			continue
		}
		b, file := limitUpTo(fsys, m, dir)
		if b > 0 && (best == 0 || b < best) {
			best, where = b, file
		}
	}
	return best, where, nil
}

// parseCgroups reads /proc/self/cgroup: the path of the v1 memory
// controller's cgroup, and of the v2 cgroup if the process has one.
func parseCgroups(b []byte) (v1Memory, v2 string, hasV2 bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		controllers, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && controllers == "":
			v2, hasV2 = p, true
		case hasWord(controllers, ",", "memory"):
			v1Memory = p
		}
	}
	return v1Memory, v2, hasV2
}

// mount is a cgroup file system mount from /proc/self/mountinfo.
type mount struct {
	root, point  string // the cgroup path mounted, and where
	v1Memory, v2 bool
}

// parseMountinfo returns the cgroup mounts of /proc/self/mountinfo: v1
// hierarchies carrying the memory controller, and v2.
func parseMountinfo(b []byte) []mount {
	var out []mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - fstype source super-options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		m := mount{root: unescape(f[3]), point: unescape(f[4])}
		switch g[0] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			m.v1Memory = hasWord(g[2], ",", "memory")
		}
		if m.v1Memory || m.v2 {
			out = append(out, m)
		}
	}
	return out
}

// cgroupDir is the directory of cgroup path rel under mount m, when m
// shows it: m mounts rel or one of its ancestors. In a cgroup namespace
// the process's path is "/" and so is the mount's root.
func cgroupDir(m mount, rel string) (string, bool) {
	if m.root != "/" && rel != m.root && !strings.HasPrefix(rel, m.root+"/") {
		return "", false
	}
	return path.Join(m.point, strings.TrimPrefix(rel, m.root)), true
}

// limitUpTo returns the least memory limit set on dir or its ancestors up
// to m's mount point, and the file that set it.
func limitUpTo(fsys fs.FS, m mount, dir string) (int64, string) {
	var best int64
	var where string
	for {
		for _, name := range limitFiles(m) {
			file := path.Join(dir, name)
			b, err := fs.ReadFile(fsys, strings.TrimPrefix(file, "/"))
			if err != nil {
				continue
			}
			if v, ok := parseLimit(b); ok && (best == 0 || v < best) {
				best = v
				where = "cgroup v1 " + file
				if m.v2 {
					where = "cgroup v2 " + file
				}
			}
		}
		if dir == m.point || dir == "/" || dir == "." {
			return best, where
		}
		dir = path.Dir(dir)
	}
}

// limitFiles are the files that limit a cgroup's memory: v2's hard limit
// and the throttle above which the kernel reclaims hard, v1's limit.
func limitFiles(m mount) []string {
	if m.v2 {
		return []string{"memory.max", "memory.high"}
	}
	return []string{"memory.limit_in_bytes"}
}

// parseLimit reads a limit file: a byte count, or "max" (v2) or a huge
// number (v1) for none.
func parseLimit(b []byte) (int64, bool) {
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v >= unlimited {
		return 0, false
	}
	return v, true
}

// physical returns MemTotal from /proc/meminfo.
func physical(fsys fs.FS) (int64, error) {
	b, err := fs.ReadFile(fsys, "proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("memlimit: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kb <= 0 {
				return 0, fmt.Errorf("memlimit: /proc/meminfo: MemTotal %q", f[1])
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("memlimit: /proc/meminfo has no MemTotal")
}

func hasWord(list, sep, word string) bool {
	for w := range strings.SplitSeq(list, sep) {
		if w == word {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and
// backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
