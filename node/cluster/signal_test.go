package cluster

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// sinkRecorder is a SignalSink that keeps what it is handed.
type sinkRecorder struct {
	mu   sync.Mutex
	sigs []bittorrent.Signal
}

func (s *sinkRecorder) Deliver(sigs []bittorrent.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sigs = append(s.sigs, sigs...)
}

func (s *sinkRecorder) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sigs)
}

func nodeNumber(n *testNode) uint32 { return NodeNumber(n.name, n.c.View().Boots[n.c.View().Self]) }

// A signal for a socket on another node goes there in one request and is
// handed to that node's sink; one for a node not in the view is dropped
// and counted.
func TestSignalsReachTheTargetsNode(t *testing.T) { synctest.Test(t, testSignalsReachTheTargetsNode) }

func testSignalsReachTheTargetsNode(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	sink := &sinkRecorder{}
	b.c.SetSignalSink(sink)
	if a.c.Self() != nodeNumber(a) || b.c.Self() != nodeNumber(b) {
		t.Fatalf("Self() = %x, %x; want the numbers of a and b", a.c.Self(), b.c.Self())
	}
	sig := bittorrent.Signal{
		Kind: bittorrent.SignalOffer, InfoHash: ihN(1), OfferID: "o", SDP: []byte(`{"sdp":"v=0"}`),
		From: bittorrent.WebRTCAddr(a.c.Self(), 1), To: bittorrent.WebRTCAddr(b.c.Self(), 2),
	}
	for range 300 { // more than a batch
		a.c.Send(b.c.Self(), &sig)
	}
	eventually.True(t, 5*time.Second, "b's sink gets every signal", func() bool { return sink.len() == 300 })
	if got := sink.sigs[0]; got.OfferID != "o" || got.To != sig.To || string(got.SDP) != string(sig.SDP) {
		t.Errorf("delivered %+v; want %+v", got, sig)
	}
	if v := testutil.ToFloat64(a.c.sig.results.WithLabelValues("sent")); v != 300 {
		t.Errorf("a counted %v sent", v)
	}
	a.c.Send(0xdead, &sig)
	if v := testutil.ToFloat64(a.c.sig.results.WithLabelValues("no_node")); v != 1 {
		t.Errorf("a signal for no member counted %v times as no_node", v)
	}
}

// When a node leaves the view, every other node drops the WebRTC peers
// whose sockets it held, and only those.
func TestWebRTCPeersOfAGoneNodeAreSwept(t *testing.T) {
	synctest.Test(t, testWebRTCPeersOfAGoneNodeAreSwept)
}

func testWebRTCPeersOfAGoneNodeAreSwept(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	a, b, c := tc.start("a"), tc.start("b"), tc.start("c")
	all := []string{"a", "b", "c"}
	tc.see(all, all)
	var changes []bittorrent.Change
	for i := range 20 {
		for _, n := range []*testNode{a, c} {
			changes = append(changes, bittorrent.Change{InfoHash: ihN(i), Op: bittorrent.OpPut, Peer: bittorrent.Peer{Addr: bittorrent.WebRTCAddr(n.c.Self(), uint32(i+1))}})
		}
	}
	a.c.Apply(changes)
	eventually.True(t, 5*time.Second, "every swarm has both peers on its owners", func() bool {
		for i := range 20 {
			if _, counts := tc.visible("b", ihN(i)); counts.Leechers != 2 {
				return false
			}
		}
		return true
	})
	c.stop()
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	eventually.True(t, 5*time.Second, "c's peers are swept from a and b", func() bool {
		for _, n := range []*testNode{a, b} {
			if st := n.store.Stats(); st.LeechersRTC != 20 {
				return false
			}
		}
		return true
	})
	for _, n := range []*testNode{a, b} {
		peers, _, _ := n.store.AnnouncePeers(ihN(3), bittorrent.WebRTCAddr(1, 1), false, 10, nil)
		for _, p := range peers {
			if node, _, _ := bittorrent.WebRTCParts(p.Addr); node != a.c.Self() {
				t.Errorf("%s still hands out %v", n.name, p.Addr)
			}
		}
	}
	if v := testutil.ToFloat64(a.c.sig.swept) + testutil.ToFloat64(b.c.sig.swept); v == 0 {
		t.Error("no sweep counted")
	}
}
