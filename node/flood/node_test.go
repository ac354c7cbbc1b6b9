//go:build flood

package flood

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memLimit is the memory the node under test may use.
const memLimit = 512 << 20

// cgroupPrefix names the cgroups the test makes, with its pid after it.
const cgroupPrefix = "karuta-flood-"

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// karutaBin builds cmd/karuta once per run.
func karutaBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", cgroupPrefix+"bin-") //nolint:usetesting // one binary for the run; TestMain removes it
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "karuta")
		if out, err := exec.Command("go", "build", "-o", builtBin, "github.com/karuta-tracker/karuta/cmd/karuta").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/karuta: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	removeStaleCgroups()
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// cgroup is where the node's memory is limited: a cgroup the test made, or
// none (GOMEMLIMIT instead).
type cgroup struct {
	dir     string // "" without a cgroup
	version int    // 1 or 2
	how     string // what limits the node, for the log
}

// v1Root and v2Root are the usual mounts of the two cgroup versions.
const (
	v1Root = "/sys/fs/cgroup/memory"
	v2Root = "/sys/fs/cgroup"
)

// makeCgroup makes a memory cgroup limited to memLimit under the v1
// memory hierarchy or the v2 root, whichever this machine has and lets
// the test write; without either, it says so and the node runs with
// GOMEMLIMIT. Cleanup removes the cgroup once the node has exited.
func makeCgroup(t *testing.T) cgroup {
	t.Helper()
	name := fmt.Sprintf("%s%d", cgroupPrefix, os.Getpid())
	limit := strconv.Itoa(memLimit)
	try := func(version int, root string, files ...string) (cgroup, error) {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return cgroup{}, err
		}
		for _, f := range files {
			path := filepath.Join(dir, f)
			if _, err := os.Stat(path); err != nil && f != files[0] {
				continue // optional, such as memsw without swap accounting
			}
			value := limit // v1's memsw counts memory and swap together: no swap
			if f == "memory.swap.max" {
				value = "0"
			}
			if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
				_ = os.Remove(dir)
				return cgroup{}, fmt.Errorf("%s: %w", path, err)
			}
		}
		return cgroup{dir: dir, version: version, how: fmt.Sprintf("cgroup v%d %s (%d MiB)", version, dir, memLimit>>20)}, nil
	}
	var errs []error
	if st, err := os.Stat(filepath.Join(v1Root, "memory.limit_in_bytes")); err == nil && st.Mode().IsRegular() {
		cg, err := try(1, v1Root, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
		if err == nil {
			return cg
		}
		errs = append(errs, err)
	}
	if ctl, err := os.ReadFile(filepath.Join(v2Root, "cgroup.subtree_control")); err == nil && strings.Contains(string(ctl), "memory") {
		cg, err := try(2, v2Root, "memory.max", "memory.swap.max")
		if err == nil {
			return cg
		}
		errs = append(errs, err)
	}
	t.Logf("no memory cgroup can be made here (%v); limiting the node with GOMEMLIMIT=%dMiB instead", errors.Join(errs...), memLimit>>20)
	return cgroup{how: fmt.Sprintf("GOMEMLIMIT=%dMiB", memLimit>>20)}
}

// remove deletes the cgroup once its processes are gone.
func (c cgroup) remove() error {
	if c.dir == "" {
		return nil
	}
	var err error
	for range 50 {
		if err = os.Remove(c.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", c.dir, err)
}

// peak is the most memory the cgroup has charged, or 0 when unknown.
func (c cgroup) peak() int64 {
	if c.dir == "" {
		return 0
	}
	file := "memory.max_usage_in_bytes"
	if c.version == 2 {
		file = "memory.peak"
	}
	b, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return v
}

// oomKills is how many times the kernel killed a process of the cgroup.
func (c cgroup) oomKills() int {
	if c.dir == "" {
		return 0
	}
	file, key := "memory.oom_control", "oom_kill "
	if c.version == 2 {
		file, key = "memory.events", "oom_kill "
	}
	b, _ := os.ReadFile(filepath.Join(c.dir, file))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// removeStaleCgroups deletes the cgroups of earlier runs that were killed
// before their cleanup: ours by name, whose process is gone.
func removeStaleCgroups() {
	for _, root := range []string{v1Root, v2Root} {
		dirs, _ := filepath.Glob(filepath.Join(root, cgroupPrefix+"*"))
		for _, d := range dirs {
			pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), cgroupPrefix))
			if err != nil || pid == os.Getpid() {
				continue
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
				_ = os.Remove(d) // fails while a process is left in it; harmless
			}
		}
	}
}

// node is a running `karuta serve`.
type node struct {
	t       *testing.T
	cmd     *exec.Cmd
	cg      cgroup
	log     *bytes.Buffer
	logMu   *sync.Mutex
	exited  chan struct{}
	exitErr error
	http    string
	udp     string
	metrics string

	maxRSS atomic.Int64
}

// startNode runs the node with config in cg (or under GOMEMLIMIT) and waits
// until it listens, sampling its resident memory until it exits.
func startNode(t *testing.T, config string, cg cgroup) *node {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "karuta.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := karutaBin(t)
	var cmd *exec.Cmd
	if cg.dir != "" {
		// The shell joins the cgroup, then becomes the node, so every
		// byte the node ever uses is charged to it.
		cmd = exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.dir, bin, "serve", "--config", path)
		cmd.Env = append(os.Environ(), "GOMEMLIMIT=")
	} else {
		cmd = exec.Command(bin, "serve", "--config", path)
		cmd.Env = append(os.Environ(), fmt.Sprintf("GOMEMLIMIT=%dMiB", memLimit>>20))
	}
	n := &node{t: t, cmd: cmd, cg: cg, log: &bytes.Buffer{}, logMu: &sync.Mutex{}, exited: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan map[string]string, 1)
	go n.readLog(stderr, started)
	go func() {
		n.exitErr = cmd.Wait()
		close(n.exited)
	}()
	go n.sampleRSS()
	t.Cleanup(func() { n.stop() })
	select {
	case addrs := <-started:
		n.http, n.udp, n.metrics = addrs["http"], addrs["udp"], addrs["metrics"]
	case <-n.exited:
		t.Fatalf("karuta serve exited at start (%v):\n%s", n.exitErr, n.logText())
	case <-time.After(30 * time.Second):
		t.Fatalf("karuta serve did not start in 30s:\n%s", n.logText())
	}
	return n
}

// readLog keeps the node's log and reports its addresses from the
// "node started" line.
func (n *node) readLog(r io.Reader, started chan<- map[string]string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		n.logMu.Lock()
		if n.log.Len() < 4<<20 {
			n.log.Write(line)
			n.log.WriteByte('\n')
		}
		n.logMu.Unlock()
		var entry struct {
			Msg   string            `json:"msg"`
			Addrs map[string]string `json:"addrs"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Msg == "node started" {
			started <- entry.Addrs
		}
	}
}

func (n *node) logText() string {
	n.logMu.Lock()
	defer n.logMu.Unlock()
	return n.log.String()
}

// sampleRSS records the node's largest resident set every 20ms.
func (n *node) sampleRSS() {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-n.exited:
			return
		case <-tick.C:
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.cmd.Process.Pid))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if rss := kb << 10; rss > n.maxRSS.Load() {
					n.maxRSS.Store(rss)
				}
			}
		}
	}
}

// alive fails the test if the node has exited.
func (n *node) alive(when string) {
	n.t.Helper()
	select {
	case <-n.exited:
		n.t.Fatalf("%s: the node died (%v; OOM kills in its cgroup: %d; largest RSS %d MiB); its log ends:\n%s",
			when, n.exitErr, n.cg.oomKills(), n.maxRSS.Load()>>20, tail(n.logText(), 30))
	default:
	}
}

// stop ends the node gracefully and removes its cgroup.
func (n *node) stop() {
	select {
	case <-n.exited:
	default:
		_ = n.cmd.Process.Signal(os.Interrupt)
		select {
		case <-n.exited:
		case <-time.After(30 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
	}
	if err := n.cg.remove(); err != nil {
		n.t.Error(err)
	}
}

// metric returns the sum of the series of name whose labels include every
// one of labels (`result="ok"`), from /metrics.
func (n *node) metric(name string, labels ...string) float64 {
	n.t.Helper()
	resp, err := http.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		n.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// liveHeap is the node's live heap after forced collections: the
// profiler's heap handler collects first with gc=1, and its text form ends
// with the runtime's memory statistics, read right after that collection
// (/metrics would allocate, and pool a gzip writer, on the way). Three
// collections, so what sync.Pools held is gone too. With FLOOD_PROFILES
// set to a directory, the heap profile is kept there as NAME.pb.gz.
func (n *node) liveHeap(name string) float64 {
	n.t.Helper()
	get := func(query string, out io.Writer) {
		resp, err := http.Get("http://" + n.metrics + "/debug/pprof/heap?gc=1" + query)
		if err != nil {
			n.t.Fatalf("heap profile: %v", err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(out, resp.Body); err != nil {
			n.t.Fatalf("heap profile: %v", err)
		}
	}
	out := io.Discard
	if dir := os.Getenv("FLOOD_PROFILES"); dir != "" {
		if f, err := os.Create(filepath.Join(dir, name+".pb.gz")); err == nil { //nolint:gosec // G703: the directory the person running the test named
			defer f.Close()
			out = f
		}
	}
	get("", io.Discard)
	get("", out)
	var text bytes.Buffer
	get("&debug=1", &text)
	for line := range strings.SplitSeq(text.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return f
			}
		}
	}
	n.t.Fatal("the heap profile reports no HeapAlloc")
	return 0
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
