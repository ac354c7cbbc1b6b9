//go:build realclient

package node

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// The clusters of issue 17, as users run them: `karuta serve` processes
// whose members share an address, or connect from an address they do not
// advertise. Each must deliver every forward and answer every read.

const (
	// procLargeFormTimeout bounds the wait for nine processes to see
	// each other and settle.
	procLargeFormTimeout = 60 * time.Second
	// identitySwarms is how many swarms the tests announce: two peers
	// each, through different nodes, so most announces are forwarded.
	identitySwarms = 200
)

// identityClusterExtra is added to each node's cluster section. As in the
// failover tests, on a shared two-core machine a fetch sometimes takes
// longer than the default read_timeout (25ms), and would then be answered
// from an older copy or the local store.
const identityClusterExtra = "  read_timeout: 250ms\n"

// exerciseCluster announces identitySwarms swarms, a leecher over UDP to
// one node and a seeder over HTTP to the next, waits until every node
// scrapes every swarm whole, reads each again through two other nodes,
// and then checks that no node dropped a forward or failed a read, and,
// unless others connect too (flooded), that none refused a data
// connection.
func exerciseCluster(t *testing.T, nodes []*karutaProc, flooded bool) {
	t.Helper()
	udpc := make([]*client, len(nodes))
	httpc := make([]*client, len(nodes))
	for i, n := range nodes {
		udpc[i] = newClient(t, "udp://"+n.client)
		httpc[i] = newClient(t, "http://"+n.client+"/announce")
	}
	ihs := make([]infohash.T, identitySwarms)
	leecher := func(i int) tracker.AnnounceRequest {
		return tracker.AnnounceRequest{InfoHash: ihs[i], PeerId: peerID('l'), Left: 100, Port: uint16(10000 + i), NumWant: -1, Event: tracker.Started}
	}
	seeder := func(i int) tracker.AnnounceRequest {
		return tracker.AnnounceRequest{InfoHash: ihs[i], PeerId: peerID('s'), Port: uint16(20000 + i), NumWant: -1, Event: tracker.Started}
	}
	for i := range ihs {
		ihs[i] = infohash.T{byte(i), byte(i >> 8), 0x17}
		udpc[i%len(nodes)].announce(leecher(i))
		httpc[(i+1)%len(nodes)].announce(seeder(i))
	}
	for k, n := range nodes {
		eventually.NoError(t, 20*time.Second, n.name+" scrapes every swarm whole", func() error {
			for lo := 0; lo < len(ihs); lo += 64 {
				batch := ihs[lo:min(lo+64, len(ihs))]
				for j, f := range udpc[k].scrape(batch...) {
					if f.Seeders != 1 || f.Leechers != 1 {
						return fmt.Errorf("swarm %d: %d seeders, %d leechers", lo+j, f.Seeders, f.Leechers)
					}
				}
			}
			return nil
		})
	}
	for i := range ihs {
		if r := udpc[(i+2)%len(nodes)].announce(leecher(i)); !hasPeer(r, 20000+i) {
			t.Fatalf("swarm %d: the leecher's announce to %s lacks the seeder", i, nodes[(i+2)%len(nodes)].name)
		}
		if r := httpc[(i+3)%len(nodes)].announce(seeder(i)); !hasPeer(r, 10000+i) {
			t.Fatalf("swarm %d: the seeder's announce to %s lacks the leecher", i, nodes[(i+3)%len(nodes)].name)
		}
	}
	var forwarded, fetched, stale float64
	for _, n := range nodes {
		m := n.scrape(t)
		forwarded += m.value("karuta_cluster_forwarded_changes_total", "result", "ok")
		fetched += m.value("karuta_cluster_reads_total", "result", "fetched") + m.value("karuta_cluster_reads_total", "result", "cached")
		for _, result := range []string{"queue_full", "unreachable", "rejected", "no_owner"} {
			if v := m.value("karuta_cluster_forwarded_changes_total", "result", result); v != 0 {
				t.Errorf("%s: %v forwarded changes ended %s", n.name, v, result)
			}
		}
		// A read that found no owner answering in time is failed; one
		// answered from an older copy because the owner was slow (on a
		// machine this busy, past read_timeout) is stale, and only noted.
		if v := m.value("karuta_cluster_reads_total", "result", "failed"); v != 0 {
			t.Errorf("%s: %v reads failed", n.name, v)
		}
		stale += m.value("karuta_cluster_reads_total", "result", "stale")
		refusals := []string{"not_member", "handshake", "timeout", "session_limit"}
		if !flooded {
			refusals = append(refusals, "pending_limit", "source_limit", "silent")
		}
		for _, reason := range refusals {
			if v := m.value("karuta_cluster_data_rejected_total", "reason", reason); v != 0 {
				t.Errorf("%s refused %v data connections: %s", n.name, v, reason)
			}
		}
	}
	if forwarded == 0 || fetched == 0 {
		t.Errorf("%v changes forwarded and %v reads from other nodes in all; the test meant both", forwarded, fetched)
	}
	t.Logf("%d nodes: %v changes forwarded, %v reads answered from other nodes (%v of them stale)", len(nodes), forwarded, fetched, stale)
}

// TestRealClusterSharedAddress is case 1 of issue 17: nine processes on
// one address (127.0.0.1, ports apart), as on one host or behind one NAT
// address. The members' connections all come from that address, and none
// may be refused for it.
func TestRealClusterSharedAddress(t *testing.T) {
	bin := buildKaruta(t)
	var specs []procSpec
	for i := range 9 {
		specs = append(specs, procSpec{name: fmt.Sprintf("s%d", i+1), host: "127.0.0.1"})
	}
	nodes := startProcClusterAt(t, bin, specs, procOptions{cluster: identityClusterExtra})
	waitProcClusterFormedWithin(t, nodes, procLargeFormTimeout)
	exerciseCluster(t, nodes, false)
}

// TestRealClusterUnadvertisedSource is case 2 of issue 17: five
// processes, each on its own loopback address as if on its own host,
// with the data channel bound to the wildcard address and advertised at
// the node's own address, so the kernel sends their data connections
// from 127.0.0.1, which no member advertises. Gossip sees every member
// alive; the data channel must serve them too.
func TestRealClusterUnadvertisedSource(t *testing.T) {
	bin := buildKaruta(t)
	var specs []procSpec
	for i := range 5 {
		specs = append(specs, procSpec{name: fmt.Sprintf("u%d", i+1), host: fmt.Sprintf("127.0.17.%d", i+1), dataHost: "0.0.0.0"})
	}
	nodes := startProcClusterAt(t, bin, specs, procOptions{cluster: identityClusterExtra})
	waitProcClusterFormed(t, nodes)
	exerciseCluster(t, nodes, false)
	// The premise: the data connections the nodes accepted came from
	// 127.0.0.1, an address none of them advertises.
	for _, n := range nodes {
		st, err := n.clusterStatus()
		if err != nil {
			t.Fatal(err)
		}
		var data netip.AddrPort
		for _, m := range st.Members {
			if m.Name == n.name {
				data = netip.MustParseAddrPort(m.DataAddr)
			}
		}
		from, err := tcpPeersOf(data)
		if err != nil {
			t.Fatal(err)
		}
		if !from[netip.MustParseAddr("127.0.0.1")] {
			t.Errorf("%s's data channel (%s) has no connection from 127.0.0.1; peers seen: %v", n.name, data, from)
		}
	}
}

// tcpPeersOf lists the remote addresses of the established TCP
// connections whose local end is local, from /proc/net/tcp and tcp6 (a
// listener on 0.0.0.0 is an IPv6 socket taking IPv4 too).
func tcpPeersOf(local netip.AddrPort) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "01" { // 01: ESTABLISHED
				continue
			}
			l, lok := parseProcAddr(fields[1])
			r, rok := parseProcAddr(fields[2])
			if lok && rok && l == local {
				out[r.Addr()] = true
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseProcAddr parses /proc/net/tcp's "0100007F:1F90": an IPv4 or IPv6
// address as 32-bit words in the host's (little-endian) byte order, and a
// port in hex. IPv4-mapped addresses come back unmapped.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	b, err := hex.DecodeString(ipHex)
	if !ok || err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for w := 0; w < len(b); w += 4 {
		b[w], b[w+1], b[w+2], b[w+3] = b[w+3], b[w+2], b[w+1], b[w]
	}
	ip, _ := netip.AddrFromSlice(b)
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), true
}

// floodProc is a running testdata/flood: silent connections held against
// the nodes from another process, as an attacker's would be.
type floodProc struct {
	cmd            *exec.Cmd
	mu             sync.Mutex
	opened, closed []int64
	done           chan struct{}
}

// startFlood builds testdata/flood and runs it with one flood per spec
// (SOURCE,TARGET,N,PAUSE); it is stopped when the test ends.
func startFlood(t *testing.T, specs ...string) *floodProc {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flood")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/flood").CombinedOutput(); err != nil {
		t.Fatalf("go build ./testdata/flood: %v\n%s", err, out)
	}
	var args []string
	for _, s := range specs {
		args = append(args, "-f", s)
	}
	f := &floodProc{cmd: exec.Command(bin, args...), opened: make([]int64, len(specs)), closed: make([]int64, len(specs)), done: make(chan struct{})}
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	f.cmd.Stderr = os.Stderr
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			f.mu.Lock()
			for i := range min(len(fields), len(f.opened)) {
				opened, closed, _ := strings.Cut(fields[i], ":")
				f.opened[i], _ = strconv.ParseInt(opened, 10, 64)
				f.closed[i], _ = strconv.ParseInt(closed, 10, 64)
			}
			f.mu.Unlock()
		}
	}()
	t.Cleanup(f.stop)
	return f
}

// counts returns how many connections flood i has opened, and how many
// of those the node has closed.
func (f *floodProc) counts(i int) (opened, closed int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opened[i], f.closed[i]
}

// stop ends the flood and waits for its last report.
func (f *floodProc) stop() {
	if f.cmd.ProcessState != nil {
		return
	}
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	<-f.done
	_ = f.cmd.Wait()
}

// TestRealClusterFloods is cases 3 and 4 of issue 17 on real processes,
// each on its own loopback address with a file descriptor limit of 2048
// and the lan profile (memberlist holds a stream it is handed for 10 s):
//
//   - the gossip port of one node gets 2400 silent connections from three
//     addresses no member is at and 300 from a member's address, more
//     than its descriptor limit, each opened again a second after it is
//     closed;
//   - its data channel gets 200 silent connections from a member's
//     address, reopened as soon as they are closed, and 300 from an
//     outsider's, reopened 100ms after.
//
// Throughout, the node's frontends and /readyz answer every probe (and
// /readyz does not call the cluster degraded), every member stays alive in
// every view, and the cluster delivers every forward and answers every
// read.
func TestRealClusterFloods(t *testing.T) {
	bin := buildKaruta(t)
	var specs []procSpec
	for i := range 3 {
		specs = append(specs, procSpec{name: fmt.Sprintf("f%d", i+1), host: fmt.Sprintf("127.0.17.%d", 11+i)})
	}
	nodes := startProcClusterAt(t, bin, specs, procOptions{
		profile: "lan",
		// Four nodes or fewer would hold every swarm on every node and
		// read locally; the floods should meet reads between nodes.
		cluster: identityClusterExtra + "  full_replication: 0\n",
		http:    "    max_connections: 256\n",
		nofile:  2048,
		// The probes and the cluster's exercise all come from 127.0.0.1,
		// together far above one address's default rate; the floods
		// reach only the cluster ports, which the rate limit never sees.
		top: "rate_limit:\n  exempt: [127.0.0.1/32]\n",
	})
	waitProcClusterFormed(t, nodes)
	target, member := nodes[1], nodes[0]
	epochs := map[string]uint64{}
	for _, n := range nodes {
		st, err := n.clusterStatus()
		if err != nil {
			t.Fatal(err)
		}
		epochs[n.name] = st.Ring.Epoch
	}

	// Probes: an HTTP and a UDP announce to the flooded node and its
	// /readyz, every 50ms; and every node's view.
	stop := make(chan struct{})
	var probeWG sync.WaitGroup
	var probes, probeFails, viewChecks atomic.Int64
	var firstFail, viewFail atomic.Value
	httpc := newClient(t, "http://"+target.client+"/announce")
	udpc := newClient(t, "udp://"+target.client)
	ops := &http.Client{Timeout: 2 * time.Second}
	fail := func(err error) {
		probeFails.Add(1)
		firstFail.CompareAndSwap(nil, err.Error())
	}
	probeWG.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			probes.Add(1)
			req := tracker.AnnounceRequest{InfoHash: infohash.T{0xfe, byte(i)}, PeerId: peerID('p'), Left: 1, Port: uint16(30000 + i%1000), NumWant: 10, Event: tracker.Started}
			if err := httpc.tryAnnounce(req); err != nil {
				fail(fmt.Errorf("http announce: %w", err))
			}
			if err := udpc.tryAnnounce(req); err != nil {
				fail(fmt.Errorf("udp announce: %w", err))
			}
			resp, err := ops.Get("http://" + target.metrics + "/readyz")
			if err != nil {
				fail(fmt.Errorf("/readyz: %w", err))
				continue
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			// Not "degraded" either: a flood from a member's address says
			// nothing of the member.
			if resp.StatusCode != http.StatusOK || err != nil || string(body) != "ready\n" {
				fail(fmt.Errorf("/readyz: %s %q: %w", resp.Status, body, err))
			}
		}
	})
	probeWG.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			for _, n := range nodes {
				viewChecks.Add(1)
				st, err := n.clusterStatus()
				switch {
				case err != nil:
					viewFail.CompareAndSwap(nil, fmt.Sprintf("%s: /cluster: %v", n.name, err))
				case st.Ring.Epoch != epochs[n.name] || !formed(st, len(nodes)):
					viewFail.CompareAndSwap(nil, fmt.Sprintf("%s: %s (epoch was %d)", n.name, describeClusterStatus(st), epochs[n.name]))
				}
			}
		}
	})

	memberHost := strings.Split(member.gossip, ":")[0]
	flood := startFlood(t,
		"127.0.0.2,"+target.gossip+",800,1s",
		"127.0.0.3,"+target.gossip+",800,1s",
		"127.0.0.4,"+target.gossip+",800,1s",
		memberHost+","+target.gossip+",300,1s",
		memberHost+","+target.data+",200,0s",
		"127.0.0.2,"+target.data+",300,100ms",
	)
	stopAll := sync.OnceFunc(func() {
		flood.stop()
		close(stop)
		probeWG.Wait()
	})
	defer stopAll()
	sizes := []int64{800, 800, 800, 300, 200, 300}
	eventually.True(t, 20*time.Second, "every flood connection opened at least once", func() bool {
		for i, n := range sizes {
			if opened, _ := flood.counts(i); opened < n {
				return false
			}
		}
		return true
	})
	exerciseCluster(t, nodes, true)
	time.Sleep(3 * time.Second) // and a while longer with nothing else going on
	stopAll()

	m := target.scrape(t)
	var report []string
	for i, what := range []string{"gossip from 127.0.0.2", "gossip from 127.0.0.3", "gossip from 127.0.0.4", "gossip from " + memberHost, "data from " + memberHost, "data from 127.0.0.2"} {
		opened, closed := flood.counts(i)
		report = append(report, fmt.Sprintf("%s: %d opened, %d closed by the node", what, opened, closed))
	}
	t.Logf("flooded %s: %s", target.name, strings.Join(report, "; "))
	for _, name := range []string{"karuta_cluster_gossip_rejected_total", "karuta_cluster_data_rejected_total"} {
		var parts []string
		for _, reason := range []string{"silent", "pending_limit", "source_limit"} {
			parts = append(parts, fmt.Sprintf("%s %v", reason, m.value(name, "reason", reason)))
		}
		t.Logf("%s: %s", name, strings.Join(parts, ", "))
	}
	if m.value("karuta_cluster_gossip_rejected_total", "reason", "source_limit") == 0 || m.value("karuta_cluster_gossip_rejected_total", "reason", "silent")+m.value("karuta_cluster_gossip_rejected_total", "reason", "pending_limit") == 0 {
		t.Error("the gossip flood was not counted where it landed")
	}
	if n := probeFails.Load(); n > 0 {
		t.Errorf("%d of %d probes of %s failed during the floods; first: %v", n, 3*probes.Load(), target.name, firstFail.Load())
	}
	if f := viewFail.Load(); f != nil {
		t.Errorf("membership changed during the floods: %v", f)
	}
	t.Logf("%d probes and %d view checks during the floods", 3*probes.Load(), viewChecks.Load())
}
