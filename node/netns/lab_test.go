//go:build netns && linux

package netns

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/karuta-tracker/karuta/node"
)

// The lab: every node is a network namespace with two interfaces. eth0
// joins its datacenter's bridge in the router namespace (10.77.<dc>.0/24,
// the router at .1 forwarding between datacenters): the cluster network,
// which the tests cut. eth1 joins the clients' bridge in the client
// namespace (10.78.0.0/24), where the probe's sockets live, so clients
// reach a node however the cluster network is cut. Nothing is added to
// the namespace the test runs in.

const (
	nsPrefix = "kfo" // + pid + "-": see removeStaleNamespaces
	// clientIP is the probe's address: every peer it announces has it.
	clientIP = "10.78.0.1"
	// trackerPort serves both HTTP and UDP announces on every node.
	trackerPort = 6969
	metricsPort = 6880
	gossipPort  = 7946
)

// profile is the nodes' cluster.profile. The stage run by `make test` uses
// local; `-profile lan` or `-profile wan` measures the slower failure
// detectors (see docs/cluster.md).
var profile = flag.String("profile", "local", "cluster.profile of the nodes: local, lan or wan")

var clusterKey = base64.StdEncoding.EncodeToString([]byte("karuta-netns-test-key-32-bytes!!"))

// lab is one test's namespaces and processes.
type lab struct {
	t      *testing.T
	prefix string // namespace names begin with it
	bin    string
	dir    string
	// every_datacenter placement for the nodes' config.
	every bool

	mu    sync.Mutex
	nodes map[string]*proc
	order []string // every node ever added, in order
	nsFds map[string]int
	http  *http.Client
}

// proc is one node: its namespace and, while running, its process.
type proc struct {
	name, dc string
	idx      int // 1-based; picks the addresses
	ns       string
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error
	logPath  string
	cfgPath  string

	// home is the node's second address when multiHome gave it one: the
	// address it advertises, on an interface of its own, while its
	// route to the others leaves through eth0 with eth0's address.
	// homeBound says gossip binds it (and the data channel the
	// wildcard), rather than gossip binding the wildcard and advertising
	// it.
	home      string
	homeBound bool
}

func (p *proc) clusterIP() string { return fmt.Sprintf("10.77.%s.%d", p.dc[len(p.dc)-1:], 10+p.idx) }

// gossipIP is the address the others reach p's gossip at.
func (p *proc) gossipIP() string {
	if p.home != "" {
		return p.home
	}
	return p.clusterIP()
}
func (p *proc) clientAddr() string {
	return net.JoinHostPort(fmt.Sprintf("10.78.0.%d", 10+p.idx), strconv.Itoa(trackerPort))
}
func (p *proc) metricsAddr() string {
	return net.JoinHostPort(fmt.Sprintf("10.78.0.%d", 10+p.idx), strconv.Itoa(metricsPort))
}
func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// karutaBinary builds cmd/karuta once per test run, without the race
// detector: the nodes are the system under test, not the test's code.
func karutaBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", nsPrefix+"-bin-") //nolint:usetesting // one binary for every test of the run; TestMain removes it
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "karuta")
		cmd := exec.Command("go", "build", "-o", builtBin, "github.com/karuta-tracker/karuta/cmd/karuta")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/karuta: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	removeStaleNamespaces()
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// removeStaleNamespaces deletes namespaces left by earlier runs that were
// killed before their cleanup: those named kfo<pid>- whose process is gone.
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		pid, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pid, _, ok = strings.Cut(pid, "-")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil {
			continue
		}
		if n != os.Getpid() && syscall.Kill(n, 0) == nil {
			continue // a live run's
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}

// newLab makes the router and client namespaces and one bridge per
// datacenter; every namespace is removed when the test ends.
func newLab(t *testing.T, tag string, dcs []string, every bool) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the netns tests need root (ip netns, veth, bridges); run them with `make netns` as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the netns tests need iproute2's ip; .ci/install-test-deps installs it")
	}
	l := &lab{
		t: t, prefix: fmt.Sprintf("%s%d-%s-", nsPrefix, os.Getpid(), tag),
		bin: karutaBinary(t), dir: t.TempDir(), every: every,
		nodes: map[string]*proc{}, nsFds: map[string]int{},
	}
	t.Cleanup(l.close)
	r, c := l.prefix+"r", l.prefix+"c"
	l.run("ip", "netns", "add", r)
	l.run("ip", "netns", "add", c)
	l.run("ip", "-n", r, "link", "set", "lo", "up")
	l.run("ip", "-n", c, "link", "set", "lo", "up")
	l.run("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.run("ip", "-n", c, "link", "add", "cl", "type", "bridge")
	l.run("ip", "-n", c, "addr", "add", clientIP+"/24", "dev", "cl")
	l.run("ip", "-n", c, "link", "set", "cl", "up")
	for _, dc := range dcs {
		l.run("ip", "-n", r, "link", "add", dc, "type", "bridge")
		l.run("ip", "-n", r, "addr", "add", fmt.Sprintf("10.77.%s.1/24", dc[len(dc)-1:]), "dev", dc)
		l.run("ip", "-n", r, "link", "set", dc, "up")
	}
	l.http = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext:         l.dialClient,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     10 * time.Second,
	}}
	return l
}

func (l *lab) run(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// close stops every process and removes every namespace, logging the
// nodes' log tails if the test failed.
func (l *lab) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, name := range l.order {
		p := l.nodes[name]
		if p.running() {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	if l.t.Failed() {
		for _, name := range l.order {
			l.t.Logf("last lines of %s's log:\n%s", name, tail(l.nodes[name].logPath, 40))
		}
	}
	if l.http != nil {
		l.http.CloseIdleConnections()
	}
	for _, fd := range l.nsFds {
		unix.Close(fd)
	}
	for _, name := range l.order {
		_ = exec.Command("ip", "netns", "del", l.nodes[name].ns).Run()
	}
	_ = exec.Command("ip", "netns", "del", l.prefix+"r").Run()
	_ = exec.Command("ip", "netns", "del", l.prefix+"c").Run()
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// addNode makes a node's namespace and links it to its datacenter and to
// the clients; start runs it.
func (l *lab) addNode(name, dc string) *proc {
	l.t.Helper()
	l.mu.Lock()
	p := &proc{name: name, dc: dc, idx: len(l.order) + 1, ns: l.prefix + name}
	p.logPath = filepath.Join(l.dir, name+".log")
	l.nodes[name] = p
	l.order = append(l.order, name)
	l.mu.Unlock()
	r, c := l.prefix+"r", l.prefix+"c"
	l.run("ip", "netns", "add", p.ns)
	l.run("ip", "-n", p.ns, "link", "set", "lo", "up")
	l.run("ip", "-n", r, "link", "add", "r-"+name, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
	l.run("ip", "-n", r, "link", "set", "r-"+name, "master", dc, "up")
	l.run("ip", "-n", p.ns, "addr", "add", p.clusterIP()+"/24", "dev", "eth0")
	l.run("ip", "-n", p.ns, "link", "set", "eth0", "up")
	l.run("ip", "-n", p.ns, "route", "add", "default", "via", fmt.Sprintf("10.77.%s.1", dc[len(dc)-1:]))
	l.run("ip", "-n", c, "link", "add", "c-"+name, "type", "veth", "peer", "name", "eth1", "netns", p.ns)
	l.run("ip", "-n", c, "link", "set", "c-"+name, "master", "cl", "up")
	l.run("ip", "-n", p.ns, "addr", "add", fmt.Sprintf("10.78.0.%d/24", 10+p.idx), "dev", "eth1")
	l.run("ip", "-n", p.ns, "link", "set", "eth1", "up")
	return p
}

// start runs `karuta serve` in p's namespace, joining through every other
// node's gossip address, with the local profile's fast failure detection.
func (l *lab) start(p *proc) {
	l.t.Helper()
	var seeds []string
	l.mu.Lock()
	for _, name := range l.order {
		if o := l.nodes[name]; o != p {
			seeds = append(seeds, strconv.Quote(net.JoinHostPort(o.gossipIP(), strconv.Itoa(gossipPort))))
		}
	}
	l.mu.Unlock()
	cfg := fmt.Sprintf(`node:
  name: %s
  datacenter: %s
  zone: %s
log:
  format: console
  level: info
frontends:
  http:
    addr: "0.0.0.0:%d"
  udp:
    addr: "0.0.0.0:%d"
metrics:
  addr: "0.0.0.0:%d"
# The probe reads and announces from one address per namespace, far past
# the per-source limits meant for clients.
rate_limit: {per_ip: {rate: 0}}
store: {max_peers_per_source: 0}
cluster:
%s  join: [%s]
  replicas: 2
  every_datacenter: %v
  profile: %s
  join_retry: 200ms
  repair_interval: 3s
  read_timeout: %s
  secret_keys: [%q]
  label: karuta-netns
`, p.name, p.dc, p.name, trackerPort, trackerPort, metricsPort, p.bindConfig(), strings.Join(seeds, ", "), l.every, *profile, readTimeout, clusterKey)
	p.cfgPath = filepath.Join(l.dir, p.name+".yaml")
	if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
		l.t.Fatal(err)
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor
	// ip netns exec replaces itself with karuta: the pid is the node's.
	cmd := exec.Command("ip", "netns", "exec", p.ns, l.bin, "serve", "--config", p.cfgPath, "--shutdown-timeout", "25s")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		p.waitErr = cmd.Wait()
		close(exited)
	}()
}

// bindConfig is p's cluster.bind, and what goes with it for a
// multi-homed node.
func (p *proc) bindConfig() string {
	switch {
	case p.home == "":
		return fmt.Sprintf("  bind: \"%s:%d\"\n", p.clusterIP(), gossipPort)
	case p.homeBound:
		return fmt.Sprintf("  bind: \"%s:%d\"\n  data_bind: \"0.0.0.0:%d\"\n", p.home, gossipPort, gossipPort+1)
	default:
		return fmt.Sprintf("  bind: \"0.0.0.0:%d\"\n  advertise: \"%s:%d\"\n", gossipPort, p.home, gossipPort)
	}
}

// multiHome gives p a second address, 10.79.0.<10+idx>, on an interface
// of its own, which the router reaches through p's eth0; p advertises it
// (binding its gossip to it when bound), while its route to the other
// nodes still leaves through eth0, whose address the kernel picks as the
// source of what p sends unless p binds another.
func (l *lab) multiHome(p *proc, bound bool) {
	l.t.Helper()
	p.home, p.homeBound = fmt.Sprintf("10.79.0.%d", 10+p.idx), bound
	// A veth pair kept inside the namespace: an interface that only
	// carries the address (the kernel here has no dummy interfaces).
	l.run("ip", "-n", p.ns, "link", "add", "home", "type", "veth", "peer", "name", "home-peer")
	l.run("ip", "-n", p.ns, "addr", "add", p.home+"/32", "dev", "home")
	l.run("ip", "-n", p.ns, "link", "set", "home-peer", "up")
	l.run("ip", "-n", p.ns, "link", "set", "home", "up")
	l.run("ip", "-n", l.prefix+"r", "route", "add", p.home+"/32", "via", p.clusterIP())
}

// kill ends p with SIGKILL, as a crash would.
func (l *lab) kill(p *proc) {
	l.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		l.t.Fatalf("SIGKILL %s: %v", p.name, err)
	}
	<-p.exited
}

// stop sends SIGTERM and waits for a clean exit: the node hands its
// swarms over before it goes.
func (l *lab) stop(p *proc) time.Duration {
	l.t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		l.t.Fatalf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(40 * time.Second):
		l.t.Fatalf("%s did not exit within 40s of SIGTERM", p.name)
	}
	if p.waitErr != nil {
		l.t.Fatalf("%s exited with %v after SIGTERM; want status 0", p.name, p.waitErr)
	}
	return time.Since(start)
}

// Network faults, all made by the network itself.

// cutDatacenters stops the router forwarding: datacenters lose each other,
// nodes within one still talk over its bridge.
func (l *lab) cutDatacenters() {
	l.run("ip", "netns", "exec", l.prefix+"r", "sysctl", "-qw", "net.ipv4.ip_forward=0")
}

func (l *lab) healDatacenters() {
	l.run("ip", "netns", "exec", l.prefix+"r", "sysctl", "-qw", "net.ipv4.ip_forward=1")
}

// isolate takes p's link to its datacenter down, at the router's end:
// p loses every other node, while clients still reach it.
func (l *lab) isolate(p *proc) { l.run("ip", "-n", l.prefix+"r", "link", "set", "r-"+p.name, "down") }
func (l *lab) rejoin(p *proc)  { l.run("ip", "-n", l.prefix+"r", "link", "set", "r-"+p.name, "up") }

// inClientNS runs f on a thread switched into the client namespace, so the
// sockets f creates live there.
func (l *lab) inClientNS(f func() error) error {
	name := l.prefix + "c"
	l.mu.Lock()
	fd, ok := l.nsFds[name]
	if !ok {
		var err error
		if fd, err = unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			l.mu.Unlock()
			return fmt.Errorf("open namespace %s: %w", name, err)
		}
		l.nsFds[name] = fd
	}
	l.mu.Unlock()
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", name, err)
	}
	ferr := f()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime ends it with the goroutine
		// rather than reuse it in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func (l *lab) dialClient(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.inClientNS(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// status reads p's /cluster.
func (l *lab) status(p *proc) (node.ClusterStatus, error) {
	var st node.ClusterStatus
	resp, err := l.http.Get("http://" + p.metricsAddr() + "/cluster")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /cluster: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// ringOf returns the member names in p's ring, sorted, and whether its last
// handoff pass settled.
func (l *lab) ringOf(p *proc) ([]string, bool, error) {
	st, err := l.status(p)
	if err != nil {
		return nil, false, err
	}
	var names []string
	for _, m := range st.Ring.Members {
		names = append(names, m.Name)
	}
	slices.Sort(names)
	return names, st.Ring.Settled, nil
}

// waitRings waits until each of nodes has exactly members in its ring
// (and, with settled, has finished handing over), returning how long it
// took for the last of them.
func (l *lab) waitRings(within time.Duration, settled bool, members []string, nodes ...*proc) time.Duration {
	l.t.Helper()
	start := time.Now()
	want := slices.Sorted(slices.Values(members))
	for _, p := range nodes {
		for {
			got, ok, err := l.ringOf(p)
			if err == nil && slices.Equal(got, want) && (ok || !settled) {
				break
			}
			if time.Since(start) > within {
				l.t.Fatalf("%s's ring is %v (settled %v, err %v) after %s; want %v", p.name, got, ok, err, within, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// waitTrusted waits until each of nodes answers every swarm it owns from
// its own copy again (/cluster's "whole"), the steady state.
func (l *lab) waitTrusted(within time.Duration, nodes ...*proc) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for _, p := range nodes {
		for {
			st, err := l.status(p)
			if err == nil && st.Ring.Whole {
				break
			}
			if time.Now().After(deadline) {
				l.t.Fatalf("%s does not trust its local copies after %s (err %v)", p.name, within, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
