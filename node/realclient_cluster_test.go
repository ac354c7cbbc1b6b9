//go:build realclient

package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

const (
	// procClusterFormTimeout bounds the wait for three fresh processes to
	// see each other and settle.
	procClusterFormTimeout = 20 * time.Second
	// procShutdownTimeout is how long a node may take to leave on SIGTERM.
	// The node itself is told a little less, so that it reports what it
	// could not finish instead of being killed.
	procShutdownTimeout = 30 * time.Second
	// procLogTail is how many lines of each node's log a failure shows.
	procLogTail = 60
)

// TestRealClientCluster is the cluster's promise to real users: two
// libtorrent clients, a seeder announcing over HTTP to n1 and a leecher over
// UDP to n3, complete a download although they never talk to the same
// node. Each node is a separate `karuta serve` process configured from YAML,
// as an operator would run it; each leaves gracefully on SIGTERM.
func TestRealClientCluster(t *testing.T) {
	py := libtorrentPython(t)
	bin := buildKaruta(t)
	nodes := startProcCluster(t, bin, "n1", "n2", "n3")
	waitProcClusterFormed(t, nodes)

	n1, n3 := nodes[0], nodes[2]
	summary := runRealClient(t, py, "http://"+n1.client+"/announce", "udp://"+n3.client+"/announce")
	t.Logf("realclient: %s", summary)

	// The download alone could succeed without a cluster only if n1 and n3
	// were one tracker; the metrics show the swarm crossed nodes. With 3
	// members and replicas 2, n1 always has an owner other than itself to
	// forward the seeder's announces to, and n3 either owns the swarm (and
	// received them) or read it from an owner.
	eventually.True(t, 5*time.Second, "n1 forwards the seeder's announces to the swarm's other owners", func() bool {
		return n1.scrape(t).value("karuta_cluster_forwarded_changes_total", "result", "ok") > 0
	})
	eventually.True(t, 5*time.Second, "n3 gets the swarm from the other nodes, as an owner or by reading", func() bool {
		m := n3.scrape(t)
		return m.value("karuta_cluster_received_changes_total") > 0 ||
			m.value("karuta_cluster_reads_total", "result", "fetched")+m.value("karuta_cluster_reads_total", "result", "cached") > 0
	})
	for _, n := range nodes {
		m := n.scrape(t)
		t.Logf("%s: forwarded ok %v, received %v, reads local %v fetched %v cached %v stale %v failed %v", n.name,
			m.value("karuta_cluster_forwarded_changes_total", "result", "ok"),
			m.value("karuta_cluster_received_changes_total"),
			m.value("karuta_cluster_reads_total", "result", "local"),
			m.value("karuta_cluster_reads_total", "result", "fetched"),
			m.value("karuta_cluster_reads_total", "result", "cached"),
			m.value("karuta_cluster_reads_total", "result", "stale"),
			m.value("karuta_cluster_reads_total", "result", "failed"))
		for _, result := range []string{"queue_full", "unreachable", "rejected", "no_owner"} {
			if v := m.value("karuta_cluster_forwarded_changes_total", "result", result); v != 0 {
				t.Errorf("%s dropped %v forwarded changes with result %s", n.name, v, result)
			}
		}
	}
	for _, c := range []struct {
		n        *karutaProc
		frontend string
	}{{n1, "http"}, {n3, "udp"}} {
		m := c.n.scrape(t)
		for _, result := range []string{"client_error", "error"} {
			if v := m.value("karuta_frontend_requests_total", "frontend", c.frontend, "action", "announce", "result", result); v != 0 {
				t.Errorf("%s's %s frontend answered %v of libtorrent's announces with result %s", c.n.name, c.frontend, v, result)
			}
		}
	}

	// Graceful leave, one at a time: n3 and n2 hand their swarms to the
	// nodes still running; n1, last, has nobody to hand to.
	for i := len(nodes) - 1; i >= 0; i-- {
		nodes[i].stop(t)
	}
}

// karutaProc is one `karuta serve` process on loopback.
type karutaProc struct {
	name    string
	client  string // host:port of both the HTTP and the UDP frontend
	ws      string // host:port of the WebTorrent frontend
	metrics string
	gossip  string
	data    string
	logPath string
	nofile  int // file descriptor limit; 0: inherited
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd.Wait has returned, into waitErr
	waitErr error
}

// buildKaruta builds cmd/karuta once, without the race detector: the nodes
// are the system under test here, not the test's own code.
func buildKaruta(t *testing.T) string {
	t.Helper()
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "karuta")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/karuta")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/karuta: %v\n%s", err, out)
	}
	t.Logf("built %s in %s", bin, time.Since(start).Round(time.Millisecond))
	return bin
}

// startProcCluster starts one process per name on 127.0.0.1, every one
// listing every gossip address as a seed.
func startProcCluster(t *testing.T, bin string, names ...string) []*karutaProc {
	t.Helper()
	specs := make([]procSpec, len(names))
	for i, name := range names {
		specs[i] = procSpec{name: name, host: "127.0.0.1"}
	}
	return startProcClusterAt(t, bin, specs, procOptions{})
}

// procSpec says where one process listens.
type procSpec struct {
	name string
	// host serves the frontends and the operations listener and binds
	// gossip; dataHost binds the data channel (empty: host).
	host, dataHost string
}

// procOptions adjust every process of a cluster.
type procOptions struct {
	// profile is cluster.profile (default local).
	profile string
	// cluster and http are YAML added to each node's cluster and
	// frontends.http sections, indented as there.
	cluster, http string
	// nofile is the processes' file descriptor limit; 0 inherits the
	// test's.
	nofile int
	// top is YAML added at the top level of each node's config.
	top string
}

// startProcClusterAt starts one process per spec, every one listing every
// gossip address as a seed. Each process's stderr goes to its own log
// file, whose tail is logged if the test fails. Processes still running at
// the end of the test are killed.
func startProcClusterAt(t *testing.T, bin string, specs []procSpec, opts procOptions) []*karutaProc {
	t.Helper()
	dir := t.TempDir()
	nodes := make([]*karutaProc, len(specs))
	var seeds []string
	free := &freePorts{t: t}
	defer free.release()
	for i, s := range specs {
		ports := free.take(s.host, 3)
		dataHost := s.dataHost
		if dataHost == "" {
			dataHost = s.host
		}
		at := func(host string, p int) string { return net.JoinHostPort(host, strconv.Itoa(p)) }
		nodes[i] = &karutaProc{
			name: s.name, client: at(s.host, ports[0]), metrics: at(s.host, ports[1]), gossip: at(s.host, ports[2]),
			data: at(dataHost, free.take(dataHost, 1)[0]), ws: at(s.host, free.take(s.host, 1)[0]),
			logPath: filepath.Join(dir, s.name+".log"),
			exited:  make(chan struct{}),
			nofile:  opts.nofile,
		}
		seeds = append(seeds, fmt.Sprintf("%q", nodes[i].gossip))
	}
	// Registered before the processes' cleanups, so it runs after them and
	// shows complete logs.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range nodes {
			t.Logf("last %d lines of %s's log (%s):\n%s", procLogTail, n.name, n.logPath, fileTail(n.logPath, procLogTail))
		}
	})
	if opts.profile == "" {
		opts.profile = "local"
	}
	free.release()
	for _, n := range nodes {
		cfg := fmt.Sprintf(`node:
  name: %q
log:
  format: console
  level: debug
frontends:
  http:
    addr: %q
%s  udp:
    addr: %q
    connection_id_keys: ["karuta-realclient-connection-id-key"]
  webtorrent:
    addr: %q
metrics:
  addr: %q
cluster:
  bind: %q
  data_bind: %q
  join: [%s]
  replicas: 2
  profile: %s
  join_retry: 500ms
  secret_keys: [%q]
  label: %q
%s%s`, n.name, n.client, opts.http, n.client, n.ws, n.metrics, n.gossip, n.data, strings.Join(seeds, ", "), opts.profile, testClusterKey, "karuta-"+t.Name(), opts.cluster, opts.top)
		cfgPath := filepath.Join(dir, n.name+".yaml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		n.start(t, bin, cfgPath)
	}
	return nodes
}

func (p *karutaProc) start(t *testing.T, bin, cfgPath string) {
	t.Helper()
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor
	shutdown := procShutdownTimeout - 5*time.Second
	args := []string{"serve", "--config", cfgPath, "--shutdown-timeout", shutdown.String()}
	if p.nofile > 0 {
		// The shell sets the limit, soft and hard, then becomes karuta.
		args = append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, p.nofile), bin}, args...)
		bin = "/bin/sh"
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = logFile
	p.cmd.Stderr = logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// stop sends SIGTERM and expects the process to leave the cluster and exit
// 0 within procShutdownTimeout.
func (p *karutaProc) stop(t *testing.T) {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM %s: %v", p.name, err)
		return
	}
	select {
	case <-p.exited:
	case <-time.After(procShutdownTimeout):
		t.Errorf("%s did not exit within %s of SIGTERM", p.name, procShutdownTimeout)
		return
	}
	if p.waitErr != nil {
		t.Errorf("%s exited after SIGTERM with %v; want exit status 0", p.name, p.waitErr)
		return
	}
	t.Logf("%s left and exited 0 in %s", p.name, time.Since(start).Round(time.Millisecond))
}

func (p *karutaProc) scrape(t *testing.T) promSamples {
	t.Helper()
	return fetchPromSamples(t, "http://"+p.metrics+"/metrics")
}

// clusterStatus reads the process's /cluster.
func (p *karutaProc) clusterStatus() (ClusterStatus, error) {
	var st ClusterStatus
	resp, err := http.Get("http://" + p.metrics + "/cluster")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /cluster: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// formed says whether st shows every one of want nodes alive in the ring,
// with the handoff after the last change finished.
func formed(st ClusterStatus, want int) bool {
	alive := 0
	for _, m := range st.Members {
		if m.State == "alive" {
			alive++
		}
	}
	return alive == want && len(st.Ring.Members) == want && st.Ring.Settled
}

// waitProcClusterFormed waits until every node sees all of them in its ring,
// settled. A process that exits meanwhile fails the test at once.
func waitProcClusterFormed(t *testing.T, nodes []*karutaProc) {
	t.Helper()
	waitProcClusterFormedWithin(t, nodes, procClusterFormTimeout)
}

// waitProcClusterFormedWithin is waitProcClusterFormed with a timeout.
func waitProcClusterFormedWithin(t *testing.T, nodes []*karutaProc, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	last := make([]string, len(nodes))
	eventually.NoError(t, timeout, fmt.Sprintf("the %d nodes all see each other, settled", len(nodes)), func() error {
		done := true
		for i, n := range nodes {
			select {
			case <-n.exited:
				t.Fatalf("%s exited while the cluster formed: %v", n.name, n.waitErr)
			default:
			}
			st, err := n.clusterStatus()
			if err != nil {
				last[i] = err.Error()
				done = false
				continue
			}
			last[i] = describeClusterStatus(st)
			if !formed(st, len(nodes)) {
				done = false
			}
		}
		if !done {
			var b strings.Builder
			for i, n := range nodes {
				fmt.Fprintf(&b, "\n%s: %s", n.name, last[i])
			}
			return fmt.Errorf("last views:%s", b.String())
		}
		return nil
	})
	t.Logf("cluster of %d processes formed in %s", len(nodes), time.Since(start).Round(time.Millisecond))
}

func describeClusterStatus(st ClusterStatus) string {
	var members, ring []string
	for _, m := range st.Members {
		members = append(members, m.Name+"="+string(m.State))
	}
	for _, m := range st.Ring.Members {
		ring = append(ring, fmt.Sprintf("%s(%.2f)", m.Name, m.Share))
	}
	return fmt.Sprintf("members [%s], ring epoch %d [%s], settled %v",
		strings.Join(members, " "), st.Ring.Epoch, strings.Join(ring, " "), st.Ring.Settled)
}

// freePorts finds ports free on a host for both TCP and UDP (gossip and
// the frontends use both). It holds every port it has handed out until
// release, so none is handed out twice; another process may still take
// one before the node binds it, which is rare enough for a test.
type freePorts struct {
	t    *testing.T
	held []io.Closer
}

// take returns n distinct ports free on host.
func (f *freePorts) take(host string, n int) []int {
	f.t.Helper()
	var ports []int
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt > 10*n {
			f.t.Fatalf("found only %d of %d free ports on %s", len(ports), n, host)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			f.t.Fatal(err)
		}
		f.held = append(f.held, l)
		u, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			continue // taken over UDP; the TCP listener stays held so the port is not offered again
		}
		f.held = append(f.held, u)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// release lets the nodes bind the ports.
func (f *freePorts) release() {
	for _, c := range f.held {
		c.Close()
	}
	f.held = nil
}

// fileTail returns the last n lines of the file at path, or why it could
// not be read.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "(no log)"
		}
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
