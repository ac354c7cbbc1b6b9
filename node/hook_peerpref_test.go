package node

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/types/infohash"
	"gopkg.in/yaml.v3"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// The peer-preference tests give every client its own loopback address
// (Linux routes all of 127/8 to lo) so that the tracker sees distinct
// source IPs over both HTTP and UDP. Rack a is 127.0/16, rack b 127.1/16;
// 127.2/16 is in no datacenter.
const peerPrefHook = `
- name: peer_preference
  options:
    ipv4_prefix: 24
    datacenters:
      rack-a: [127.0.0.0/16]
      rack-b: [127.1.0.0/16]
`

// peerPrefProbe announces from 127.0.1.1: rack a, subnet 127.0.1.0/24.
const peerPrefProbe = "127.0.1.1"

func withPeerPref(t *testing.T) func(*Config) {
	t.Helper()
	var specs []hooks.Spec
	if err := yaml.Unmarshal([]byte(peerPrefHook), &specs); err != nil {
		t.Fatal(err)
	}
	return func(c *Config) { c.Hooks = specs }
}

// boundClient is a tracker client whose requests leave from ip.
func boundClient(t *testing.T, url, ip string) *client {
	t.Helper()
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	cl, err := tracker.NewClient(url, tracker.NewClientOpts{
		Http: trhttp.NewClientOpts{DialContext: dialer.DialContext},
		ListenPacket: func(network, _ string) (net.PacketConn, error) {
			return net.ListenPacket(network, net.JoinHostPort(ip, "0"))
		},
	})
	if err != nil {
		t.Fatalf("tracker client for %s from %s: %v", url, ip, err)
	}
	t.Cleanup(func() { cl.Close() })
	return &client{t: t, url: url, cl: cl}
}

// peerPrefSwarm lists the swarm's peers by group as seen from the probe:
// 5 in its subnet, 5 more in its datacenter, 20 elsewhere (15 in the
// other datacenter, 5 in none).
func peerPrefSwarm() (addrs []string) {
	for i := range 5 {
		addrs = append(addrs, fmt.Sprintf("127.0.1.%d", 10+i))
	}
	for i := range 5 {
		addrs = append(addrs, fmt.Sprintf("127.0.%d.%d", 2+i%2, 10+i))
	}
	for i := range 15 {
		addrs = append(addrs, fmt.Sprintf("127.1.1.%d", 10+i))
	}
	for i := range 5 {
		addrs = append(addrs, fmt.Sprintf("127.2.0.%d", 10+i))
	}
	return addrs
}

// peerPrefGroup is a peer's group as seen from the probe: 0 subnet,
// 1 datacenter, 2 the rest.
func peerPrefGroup(a netip.Addr) int {
	switch {
	case netip.MustParsePrefix("127.0.1.0/24").Contains(a):
		return 0
	case netip.MustParsePrefix("127.0.0.0/16").Contains(a):
		return 1
	}
	return 2
}

// announcePeerPrefSwarm announces the swarm's peers, alternating HTTP and
// UDP and seeders and leechers, the i-th to nodes[i%len(nodes)].
func announcePeerPrefSwarm(t *testing.T, nodes []*Node, ih infohash.T) {
	t.Helper()
	for i, ip := range peerPrefSwarm() {
		n := nodes[i%len(nodes)]
		url := "udp://" + n.Addrs().UDP
		if i%2 == 0 {
			url = "http://" + n.Addrs().HTTP + "/announce"
		}
		left := int64(0)
		if i%3 == 0 {
			left = 100
		}
		boundClient(t, url, ip).announce(tracker.AnnounceRequest{
			InfoHash: ih, PeerId: peerID(byte(i)), Left: left, Port: uint16(6000 + i), NumWant: -1, Event: tracker.Started,
		})
	}
}

// checkPeerPrefAnswer reports nil when an answer of numwant peers lists
// the subnet's peers first, then the datacenter's, then the rest. When the
// hook's candidates (4 × numwant) cover the swarm of 30, the answer must
// also hold as many of each group as there are, best first.
func checkPeerPrefAnswer(resp tracker.AnnounceResponse, numwant int) error {
	var groups []int
	for _, p := range resp.Peers {
		ap, _ := p.ToNetipAddrPort()
		groups = append(groups, peerPrefGroup(ap.Addr().Unmap()))
	}
	if len(groups) != min(numwant, 30) {
		return fmt.Errorf("numwant %d: got %d peers %v", numwant, len(groups), resp.Peers)
	}
	if !slices.IsSorted(groups) {
		return fmt.Errorf("numwant %d: answer groups %v are not subnet, then datacenter, then the rest (peers %v)", numwant, groups, resp.Peers)
	}
	if 4*numwant < 30 {
		return nil // the candidates were a random part of the swarm
	}
	var want []int
	for g, size := range []int{5, 5, 20} {
		for range size {
			if len(want) < numwant {
				want = append(want, g)
			}
		}
	}
	if !slices.Equal(groups, want) {
		return fmt.Errorf("numwant %d: answer groups %v, want %v (peers %v)", numwant, groups, want, resp.Peers)
	}
	return nil
}

// probePeerPref announces the probe leecher from peerPrefProbe to url (an
// HTTP announce URL or a UDP tracker) and checks the ranking for several
// numwants. The HTTP client sends no numwant, so it goes in the URL.
func probePeerPref(t *testing.T, url string, ih infohash.T) error {
	for _, numwant := range []int{3, 8, 12, 50} {
		u := url
		if strings.HasPrefix(url, "http") {
			u = fmt.Sprintf("%s?numwant=%d", url, numwant)
		}
		c := boundClient(t, u, peerPrefProbe)
		resp := c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('p'), Left: 10, Port: 7000, NumWant: int32(numwant)})
		if err := checkPeerPrefAnswer(resp, numwant); err != nil {
			return fmt.Errorf("%s: %w", url, err)
		}
	}
	return nil
}

// TestPeerPrefSingleNode announces 30 peers from distinct addresses over
// HTTP and UDP, then checks that a probe in rack a's 127.0.1.0/24 gets its
// subnet first, then its datacenter, then the rest, over both protocols.
func TestPeerPrefSingleNode(t *testing.T) {
	n := startNode(t, "127.0.0.1", withPeerPref(t))
	ih := infohash.T{0x9e, 1}
	announcePeerPrefSwarm(t, []*Node{n}, ih)
	for _, url := range []string{"http://" + n.Addrs().HTTP + "/announce", "udp://" + n.Addrs().UDP} {
		c := boundClient(t, url, peerPrefProbe)
		eventually.True(t, 5*time.Second, url+" answers the whole swarm", func() bool {
			return len(c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('p'), Left: 10, Port: 7000, NumWant: 50}).Peers) == 30
		})
		if err := probePeerPref(t, url, ih); err != nil {
			t.Error(err)
		}
	}
}

// TestPeerPrefClusterNonOwner spreads the swarm's announces over three
// nodes keeping one copy of each swarm, and probes at the nodes that do not
// own it: their answers come from a copy fetched from the owner, and still
// rank by subnet and datacenter.
func TestPeerPrefClusterNonOwner(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	mutate := withPeerPref(t)
	var nodes []*Node
	for i, name := range []string{"n1", "n2", "n3"} {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		nodes = append(nodes, startClusterNode(t, name, join, func(c *Config) {
			mutate(c)
			c.Cluster.Replicas = 1
		}))
	}
	eventually.NoError(t, convergeWithin, "cluster converges", func() error { return converged(nodes) })

	ih := infohash.T{0x9e, 2}
	announcePeerPrefSwarm(t, nodes, ih)
	var others []*Node
	for _, n := range nodes {
		if !n.cl.data.View().Owns(bittorrent.InfoHash(ih), nil) {
			others = append(others, n)
		}
	}
	if len(others) != 2 {
		t.Fatalf("%d nodes do not own the swarm, want 2 of 3 with one replica", len(others))
	}
	for _, n := range others {
		for _, url := range []string{"http://" + n.Addrs().HTTP + "/announce", "udp://" + n.Addrs().UDP} {
			c := boundClient(t, url, peerPrefProbe)
			eventually.NoError(t, visibleWithin, url+" at "+nodeName(n)+" answers the whole swarm", func() error {
				if got := len(c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('p'), Left: 10, Port: 7000, NumWant: 50}).Peers); got != 30 {
					return fmt.Errorf("got %d peers, want 30", got)
				}
				return nil
			})
			if err := probePeerPref(t, url, ih); err != nil {
				t.Errorf("%s: %v", nodeName(n), err)
			}
		}
		if _, _, stored := n.store.Swarm(bittorrent.InfoHash(ih), 1, nil); stored {
			t.Errorf("%s stores the swarm it does not own; the test would not show ranking of fetched peers", nodeName(n))
		}
	}
}
