//go:build realclient

package node

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
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
// and then checks that no node dropped a forward, failed a read or
// refused a member's data connection.
func exerciseCluster(t *testing.T, nodes []*karutaProc) {
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
	var forwarded, fetched float64
	for _, n := range nodes {
		m := n.scrape(t)
		forwarded += m.value("karuta_cluster_forwarded_changes_total", "result", "ok")
		fetched += m.value("karuta_cluster_reads_total", "result", "fetched") + m.value("karuta_cluster_reads_total", "result", "cached")
		for _, result := range []string{"queue_full", "unreachable", "rejected", "no_owner"} {
			if v := m.value("karuta_cluster_forwarded_changes_total", "result", result); v != 0 {
				t.Errorf("%s: %v forwarded changes ended %s", n.name, v, result)
			}
		}
		for _, result := range []string{"failed", "stale"} {
			if v := m.value("karuta_cluster_reads_total", "result", result); v != 0 {
				t.Errorf("%s: %v reads ended %s", n.name, v, result)
			}
		}
		for _, reason := range []string{"not_member", "pending_limit", "source_limit", "handshake", "timeout", "session_limit"} {
			if v := m.value("karuta_cluster_data_rejected_total", "reason", reason); v != 0 {
				t.Errorf("%s refused %v data connections: %s", n.name, v, reason)
			}
		}
	}
	if forwarded == 0 || fetched == 0 {
		t.Errorf("%v changes forwarded and %v reads from other nodes in all; the test meant both", forwarded, fetched)
	}
	t.Logf("%d nodes: %v changes forwarded, %v reads answered from other nodes, none lost", len(nodes), forwarded, fetched)
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
	nodes := startProcClusterAt(t, bin, specs, identityClusterExtra)
	waitProcClusterFormedWithin(t, nodes, procLargeFormTimeout)
	exerciseCluster(t, nodes)
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
	nodes := startProcClusterAt(t, bin, specs, identityClusterExtra)
	waitProcClusterFormed(t, nodes)
	exerciseCluster(t, nodes)
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
