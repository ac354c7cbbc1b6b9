package transport

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

func newTestGossip(t *testing.T, mutate func(*GossipOptions)) *Gossip {
	t.Helper()
	opts := GossipOptions{Bind: "127.0.0.1:0"}
	if mutate != nil {
		mutate(&opts)
	}
	g, err := NewGossip(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Shutdown() })
	return g
}

// gossipMember runs a memberlist on g, as ring does. The floods below
// run in this process too, under the race detector, so memberlist's
// streams get 5 s to be served unless tcpTimeout says otherwise.
func gossipMember(t *testing.T, name string, g *Gossip, tcpTimeout ...time.Duration) *memberlist.Memberlist {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name
	mc.Transport = g
	mc.AdvertisePort = 0
	mc.Logger = log.New(io.Discard, "", 0)
	mc.TCPTimeout = 5 * time.Second
	for _, d := range tcpTimeout {
		mc.TCPTimeout = d
	}
	mc.SecretKey = []byte("0123456789abcdef")
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ml.Shutdown() })
	return ml
}

func gossipRejected(g *Gossip, reason string) int {
	return int(testutil.ToFloat64(g.metrics.rejected.WithLabelValues(reason)))
}

// TestGossipMembers runs memberlist over the transport: members find each
// other by stream (the join's push-pull) and keep each other alive by
// packet, and every stream is given back to the pool when memberlist is
// done with it.
func TestGossipMembers(t *testing.T) {
	trNoLeaks(t)
	var gs []*Gossip
	var mls []*memberlist.Memberlist
	for i := range 3 {
		g := newTestGossip(t, nil)
		gs = append(gs, g)
		mls = append(mls, gossipMember(t, fmt.Sprintf("g%d", i), g))
	}
	for _, ml := range mls[1:] {
		if _, err := ml.Join([]string{gs[0].Addr().String()}); err != nil {
			t.Fatal(err)
		}
	}
	eventually.True(t, 5*time.Second, "every member sees three", func() bool {
		for _, ml := range mls {
			if ml.NumMembers() != 3 {
				return false
			}
		}
		return true
	})
	eventually.True(t, 5*time.Second, "streams given back", func() bool {
		for _, g := range gs {
			if g.pre.len() != 0 {
				return false
			}
		}
		return true
	})
	for _, ml := range mls {
		if err := ml.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGossipFlood is case 4 of issue 17 at the listener: silent streams
// reopened as fast as they are closed, from an outsider's address and from
// a member's address, more than the bound. The listener never holds more
// than its bound, closes silent streams after SilentTimeout or when a
// talking one needs their place, counts every one, and members still
// join during the flood (retrying, as memberlist's own joins and
// push-pulls do, should a stream of theirs be the one closed).
func TestGossipFlood(t *testing.T) {
	trNoLeaks(t)
	const bound = DefaultGossipStreams
	g := newTestGossip(t, func(o *GossipOptions) {
		o.SilentTimeout = 300 * time.Millisecond
		o.KnownHost = func(ip netip.Addr) bool { return ip == loopback }
	})
	gossipMember(t, "target", g)
	stop := make(chan struct{})
	var floodWG sync.WaitGroup
	outsider := silentFlood(&floodWG, "127.0.0.2", g.Addr().String(), 100, true, stop)
	member := silentFlood(&floodWG, "127.0.0.1", g.Addr().String(), bound+100, true, stop)
	stopFlood := sync.OnceFunc(func() {
		close(stop)
		floodWG.Wait()
	})
	defer stopFlood()
	var most int
	eventually.True(t, 10*time.Second, "both floods reconnect", func() bool {
		most = max(most, g.pre.len())
		return outsider.Load() > 100 && member.Load() > bound+100
	})
	for i := range 3 {
		joiner := gossipMember(t, fmt.Sprintf("joiner%d", i), newTestGossip(t, nil))
		eventually.NoError(t, 10*time.Second, "a member joins during the flood", func() error {
			most = max(most, g.pre.len())
			_, err := joiner.Join([]string{g.Addr().String()})
			return err
		})
	}
	stopFlood()
	if most > bound {
		t.Errorf("%d streams open at once; the bound is %d", most, bound)
	}
	closed := outsider.Load() + member.Load()
	counted := func() int64 {
		return int64(gossipRejected(g, reasonSilent) + gossipRejected(g, reasonPendingLimit) + gossipRejected(g, reasonSourceLimit))
	}
	eventually.True(t, 10*time.Second, "every closed flood stream counted", func() bool { return counted() >= closed })
	if gossipRejected(g, reasonSourceLimit) == 0 || gossipRejected(g, reasonPendingLimit) == 0 {
		t.Errorf("want the outsider held to its source limit and the member's address to the total; got source_limit %d, pending_limit %d",
			gossipRejected(g, reasonSourceLimit), gossipRejected(g, reasonPendingLimit))
	}
	eventually.True(t, 5*time.Second, "nothing left open", func() bool { return g.pre.len() == 0 })
	t.Logf("flood: %d streams closed; silent %d, pending_limit %d, source_limit %d; at most %d open",
		closed, gossipRejected(g, reasonSilent), gossipRejected(g, reasonPendingLimit), gossipRejected(g, reasonSourceLimit), most)
}

// TestGossipStalledStreamsBounded checks streams that talk and then
// stall, which memberlist holds until its own timeout: they still count,
// so past the bound new ones are refused and counted.
func TestGossipStalledStreamsBounded(t *testing.T) {
	trNoLeaks(t)
	g := newTestGossip(t, func(o *GossipOptions) {
		o.MaxStreams = 10
		o.KnownHost = func(netip.Addr) bool { return true }
	})
	gossipMember(t, "target", g, time.Second)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 10 {
		nc := dialFrom(t, "127.0.0.1", g.Addr().String())
		if _, err := nc.Write([]byte{10}); err != nil { // memberlist's encryptMsg, and then nothing
			t.Fatal(err)
		}
		conns = append(conns, nc)
	}
	eventually.True(t, 3*time.Second, "all ten in memberlist's hands", func() bool {
		g.pre.mu.Lock()
		defer g.pre.mu.Unlock()
		held := 0
		for _, s := range g.pre.bySource {
			for _, c := range s.conns {
				if c.held {
					held++
				}
			}
		}
		return held == 10
	})
	extra := dialFrom(t, "127.0.0.1", g.Addr().String())
	defer extra.Close()
	if !closedWithin(extra, 3*time.Second) {
		t.Fatal("a stream past the bound was kept")
	}
	if n := gossipRejected(g, reasonPendingLimit); n != 1 {
		t.Fatalf("pending_limit counted %d; want 1", n)
	}
	// memberlist gives up on them after its TCPTimeout; their places
	// come back.
	eventually.True(t, 5*time.Second, "stalled streams end", func() bool { return g.pre.len() == 0 })
}

// TestGossipAddresses checks the advertised address and the source of
// outgoing streams.
func TestGossipAddresses(t *testing.T) {
	g := newTestGossip(t, func(o *GossipOptions) { o.LocalAddr = "127.0.0.6" })
	port := g.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		ip       string
		port     int
		wantIP   string
		wantPort int
	}{
		{"", 0, "127.0.0.1", port},
		{"", 7946, "127.0.0.1", 7946},
		{"203.0.113.7", 0, "203.0.113.7", port},
		{"203.0.113.7", 17946, "203.0.113.7", 17946},
	} {
		ip, p, err := g.FinalAdvertiseAddr(tc.ip, tc.port)
		if err != nil || ip.String() != tc.wantIP || p != tc.wantPort {
			t.Errorf("FinalAdvertiseAddr(%q, %d) = %s, %d, %v; want %s, %d", tc.ip, tc.port, ip, p, err, tc.wantIP, tc.wantPort)
		}
	}
	if _, _, err := g.FinalAdvertiseAddr("not-an-ip", 0); err == nil {
		t.Error("FinalAdvertiseAddr took a name")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := g.DialTimeout(ln.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if src := nc.LocalAddr().(*net.TCPAddr).IP.String(); src != "127.0.0.6" {
		t.Fatalf("stream left from %s; want 127.0.0.6", src)
	}
}
