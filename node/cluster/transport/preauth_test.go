package transport

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// fakeConn stands for a connection in the pool's tests; the pool only
// closes connections through its caller, and cannot peek at these.
type fakeConn struct {
	net.Conn
	name string
}

// TestPreauthPoolOrder pins who yields when the pool is full or a
// source is at its limit: silent before talking, unknown before known,
// the source holding the most, oldest first; held connections never; and
// a talking connection of a known source only to another known one.
func TestPreauthPoolOrder(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	u, v := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	type conn struct {
		src     netip.Addr
		known   bool
		talking bool
		held    bool
	}
	for _, tc := range []struct {
		name   string
		max    int
		have   []conn
		add    conn
		evict  int // index into have; -1: none
		reason string
	}{
		{"known full of silent: the oldest of the biggest source", 4,
			[]conn{{src: a, known: true}, {src: b, known: true}, {src: b, known: true}, {src: a, known: true, talking: true}},
			conn{src: a, known: true}, 1, reasonPendingLimit},
		{"unknown silent yields before known silent", 3,
			[]conn{{src: a, known: true}, {src: a, known: true}, {src: u}},
			conn{src: b, known: true}, 2, reasonPendingLimit},
		{"silent known yields to a new unknown", 3,
			[]conn{{src: a, known: true}, {src: u, talking: true}, {src: u, talking: true}},
			conn{src: v}, 0, reasonPendingLimit},
		{"talking unknown yields before talking known", 3,
			[]conn{{src: a, known: true, talking: true}, {src: u, talking: true}, {src: a, known: true, talking: true}},
			conn{src: b, known: true}, 1, reasonPendingLimit},
		{"talking known yields only to known", 2,
			[]conn{{src: a, known: true, talking: true}, {src: a, known: true, talking: true}},
			conn{src: u}, -1, reasonPendingLimit},
		{"talking known yields to known, oldest first", 2,
			[]conn{{src: a, known: true, talking: true}, {src: a, known: true, talking: true}},
			conn{src: a, known: true}, 0, reasonPendingLimit},
		{"held never yield", 2,
			[]conn{{src: a, known: true, held: true}, {src: u, held: true}},
			conn{src: a, known: true}, -1, reasonPendingLimit},
		{"unknown source at its limit: its own oldest silent", 10,
			[]conn{{src: u, talking: true}, {src: u}, {src: u}, {src: u}},
			conn{src: u}, 1, reasonSourceLimit},
		{"talking connections do not count against an unknown source's limit", 10,
			[]conn{{src: v}, {src: u, talking: true}, {src: u, talking: true}, {src: u, talking: true}, {src: u}},
			conn{src: u}, -1, ""},
		{"the new connection's source loses its last one", 2,
			[]conn{{src: u}, {src: a, known: true, talking: true}},
			conn{src: u}, 0, reasonPendingLimit},
		{"a known source has no limit of its own", 10,
			[]conn{{src: a, known: true}, {src: a, known: true}, {src: a, known: true}},
			conn{src: a, known: true}, -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gauge int
			p := newPreauthPool(tc.max, 3, true, func(d int) { gauge += d })
			var entries []*pendingConn
			now := time.Unix(1000, 0)
			for i, c := range tc.have {
				e, reason, out := p.add(&fakeConn{name: fmt.Sprint(i)}, c.src, c.known, now.Add(time.Duration(i)*time.Millisecond))
				if e == nil || len(out) > 0 {
					t.Fatalf("setup: conn %d not taken as is (%q, %d closed)", i, reason, len(out))
				}
				if c.talking {
					p.talk(e)
				}
				if c.held && !p.hold(e) {
					t.Fatal("setup: hold failed")
				}
				entries = append(entries, e)
			}
			e, reason, out := p.add(&fakeConn{name: "new"}, tc.add.src, tc.add.known, now.Add(time.Second))
			switch {
			case tc.evict < 0 && tc.reason == "":
				if e == nil || len(out) != 0 {
					t.Fatalf("want the new connection taken without closing any; got %v, %q, %d closed", e != nil, reason, len(out))
				}
			case tc.evict < 0:
				if e != nil || reason != tc.reason || len(out) != 0 {
					t.Fatalf("want the new connection refused for %s; got taken %v, %q, %d closed", tc.reason, e != nil, reason, len(out))
				}
			default:
				if e == nil || len(out) != 1 || out[0].c != entries[tc.evict] || out[0].reason != tc.reason {
					var got []string
					for _, o := range out {
						got = append(got, o.c.nc.(*fakeConn).name+":"+o.reason)
					}
					t.Fatalf("want conn %d closed for %s; got taken %v, closed %v", tc.evict, tc.reason, e != nil, got)
				}
				if p.remove(entries[tc.evict]) {
					t.Fatal("the closed connection is still in the pool")
				}
			}
			if gauge != p.len() || p.len() > tc.max {
				t.Fatalf("pool holds %d (gauge %d); bound %d", p.len(), gauge, tc.max)
			}
			// Everything the pool counts, it can find and give back.
			for i, c := range entries {
				if tc.evict != i {
					p.remove(c)
				}
			}
			if e != nil && !p.remove(e) {
				t.Fatal("the new connection cannot be removed from the pool")
			}
			if p.len() != 0 || gauge != 0 || len(p.bySource) != 0 {
				t.Fatalf("after removing everything the pool holds %d (gauge %d, %d sources)", p.len(), gauge, len(p.bySource))
			}
		})
	}
}

// TestHandshakeSlotsOrder checks the scheduler: known sources before
// unknown ones, round-robin over sources, unknown sources held to their
// share, and a waiter whose deadline passes leaves the queue.
func TestHandshakeSlotsOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHandshakeSlots(2) // unknown sources: 1
		a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
		u := netip.MustParseAddr("192.0.2.1")
		var mu sync.Mutex
		var order []string
		take := func(name string, src netip.Addr, known bool) {
			deadline := time.Now().Add(time.Second)
			go func() {
				if err := h.acquire(src, known, deadline, nil); err != nil {
					mu.Lock()
					order = append(order, name+" timed out")
					mu.Unlock()
					return
				}
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
			}()
			synctest.Wait()
		}
		// Both slots taken by known sources; then waiters arrive.
		take("a1", a, true)
		take("a2", a, true)
		take("u1", u, false)
		take("a3", a, true)
		take("a4", a, true)
		take("b1", b, true)
		got := func() []string {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(order)
		}
		if want := []string{"a1", "a2"}; !slices.Equal(got(), want) {
			t.Fatalf("granted %v; want %v", got(), want)
		}
		// Each release serves the known sources in turn (a, then b,
		// then a again) before the unknown one, which came first.
		for range 3 {
			h.release(true)
			synctest.Wait()
		}
		if want := []string{"a1", "a2", "a3", "b1", "a4"}; !slices.Equal(got(), want) {
			t.Fatalf("granted %v; want %v", got(), want)
		}
		h.release(true)
		synctest.Wait()
		if want := []string{"a1", "a2", "a3", "b1", "a4", "u1"}; !slices.Equal(got(), want) {
			t.Fatalf("granted %v; want %v", got(), want)
		}
		// Unknown sources hold at most one slot: a second waits although
		// a slot is free, and gives up at its deadline.
		h.release(true)
		take("u2", u, false)
		if n := len(got()); n != 6 {
			t.Fatalf("granted %v; u2 must wait while u1 holds the unknown share", got())
		}
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		if want := "u2 timed out"; got()[6] != want {
			t.Fatalf("granted %v; want %q last", got(), want)
		}
		// A known source still finds the free slot at once.
		take("b2", b, true)
		if last := got()[len(got())-1]; last != "b2" {
			t.Fatalf("granted %v; want b2 at once", got())
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.busy != 2 || h.busyUnknown != 1 || len(h.classes[0].order)+len(h.classes[1].order) != 0 {
			t.Fatalf("busy %d (unknown %d), queues %v %v; want 2 (1) and empty", h.busy, h.busyUnknown, h.classes[0].order, h.classes[1].order)
		}
	})
}

// TestTCPSilentYields fills the pool with silent connections from the
// member's own address; the member's call takes the place of the oldest
// and succeeds.
func TestTCPSilentYields(t *testing.T) {
	trNoLeaks(t)
	srv := tcpServe(t, func(o *TCPOptions) { o.MaxPending = 8; o.HandshakeTimeout = 10 * time.Second; o.Log = nil }, &trHandler{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 8 {
		conns = append(conns, dialFrom(t, "127.0.0.1", srv.Addr()))
	}
	eventually.True(t, 5*time.Second, "the pool is full", func() bool { return pendingNow(srv) == 8 })
	cl := newTestTCP(t, func(o *TCPOptions) { o.ConnsPerPeer = 1 })
	if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
		t.Fatalf("the member's call with the pool full of silent connections: %v", err)
	}
	if !closedWithin(conns[0], 3*time.Second) {
		t.Fatal("the oldest silent connection was not the one closed")
	}
	if n := rejected(srv, reasonPendingLimit); n != 1 {
		t.Fatalf("pending_limit counted %d; want 1", n)
	}
	for _, c := range conns[1:] {
		if closedWithin(c, 10*time.Millisecond) {
			t.Fatal("a younger silent connection was closed too")
		}
	}
}

// stallConn passes writes through and blocks reads until closed: a TLS
// client on it sends its hello and never reads the answer.
type stallConn struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (c *stallConn) Read([]byte) (int, error) {
	<-c.closed
	return 0, net.ErrClosed
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestTCPSlowHandshakesHoldNoSlot is the slow half of issue 17's "a
// silent or slow connection must not keep a member out": 40 connections
// from the member's own address send a TLS hello and never read the
// answer, 40 more from an outsider's address do the same, and the node
// has two handshake slots. Waiting for a peer holds no slot, so the
// member's call goes through at once.
func TestTCPSlowHandshakesHoldNoSlot(t *testing.T) {
	trNoLeaks(t)
	srv := tcpServe(t, func(o *TCPOptions) { o.MaxHandshakes = 2; o.HandshakeTimeout = 5 * time.Second; o.Log = nil }, &trHandler{})
	var stalled []*stallConn
	var wg sync.WaitGroup
	defer func() {
		for _, c := range stalled {
			c.Close()
		}
		wg.Wait()
	}()
	talking := func() bool {
		srv.pre.mu.Lock()
		defer srv.pre.mu.Unlock()
		n := 0
		for _, s := range srv.pre.bySource {
			for _, c := range s.conns {
				if c.talking {
					n++
				}
			}
		}
		return n == len(stalled) && srv.pre.n == n
	}
	// Talking connections do not count against a source's limit: all 80
	// are kept, and none holds a slot. Each is dialed once the one before
	// it has talked: a connection whose hello has not left yet is silent,
	// and an unknown source's ninth silent connection rightly makes room.
	for _, src := range []string{"127.0.0.1", "127.0.0.2"} {
		for range 40 {
			sc := &stallConn{Conn: dialFrom(t, src, srv.Addr()), closed: make(chan struct{})}
			stalled = append(stalled, sc)
			wg.Go(func() {
				tc := tls.Client(sc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // G402: an attacker's client checks nothing
				_ = tc.Handshake()
			})
			eventually.True(t, 5*time.Second, "every slow connection has talked", talking)
		}
	}
	eventually.True(t, 5*time.Second, "no slot held while waiting for the peers", func() bool {
		srv.slots.mu.Lock()
		defer srv.slots.mu.Unlock()
		return srv.slots.busy == 0
	})
	cl := newTestTCP(t, nil)
	start := time.Now()
	if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
		t.Fatalf("the member's call beside 80 slow handshakes: %v", err)
	}
	t.Logf("call answered in %s beside %d slow handshakes", time.Since(start).Round(time.Millisecond), len(stalled))
}

// TestProvenSourcesBounded checks that remembered sources expire and
// stay within their bound.
func TestProvenSourcesBounded(t *testing.T) {
	p := newProvenSources()
	p.max = 3
	now := time.Unix(1000, 0)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for i := range 5 {
		p.add(addr(i), now.Add(time.Duration(i)*time.Second))
	}
	if len(p.at) != 3 {
		t.Fatalf("%d sources remembered; want the bound, 3", len(p.at))
	}
	later := now.Add(10 * time.Second)
	if p.has(addr(0), later) || p.has(addr(1), later) || !p.has(addr(4), later) {
		t.Fatal("want the oldest forgotten first and the newest kept")
	}
	if p.has(addr(4), now.Add(provenFor+5*time.Second)) {
		t.Fatal("a source is still known after provenFor")
	}
}

// TestPreauthPoolGossipSourceLimit checks the gossip listener's pool,
// which counts every stream of an unknown source against its limit
// (memberlist holds one that talked for its whole timeout): the oldest
// that may yield goes, and when all are in memberlist's hands the new one
// is refused.
func TestPreauthPoolGossipSourceLimit(t *testing.T) {
	u := netip.MustParseAddr("192.0.2.1")
	p := newPreauthPool(100, 2, false, nil)
	now := time.Unix(1000, 0)
	first, _, _ := p.add(&fakeConn{name: "1"}, u, false, now)
	second, _, _ := p.add(&fakeConn{name: "2"}, u, false, now)
	p.talk(first)
	p.talk(second)
	third, _, out := p.add(&fakeConn{name: "3"}, u, false, now)
	if third == nil || len(out) != 1 || out[0].c != first || out[0].reason != reasonSourceLimit {
		t.Fatalf("want the oldest talking stream closed for the third; got %v closed", out)
	}
	p.hold(second)
	p.hold(third)
	if c, reason, out := p.add(&fakeConn{name: "4"}, u, false, now); c != nil || reason != reasonSourceLimit || len(out) != 0 {
		t.Fatalf("with both held, want the fourth refused for source_limit; got taken %v, %q, %d closed", c != nil, reason, len(out))
	}
}
