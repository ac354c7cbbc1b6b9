package udp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

func TestConnectLimiter(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	tests := []struct {
		name  string
		steps []step
	}{
		{"burst then refused", steps(
			step{a, 0, 15, 10},
		)},
		{"refills at the rate", steps(
			step{a, 0, 10, 10},
			step{a, 0, 1, 0},
			step{a, 499 * time.Millisecond, 1, 0},
			step{a, 500 * time.Millisecond, 2, 1},
			step{a, 5 * time.Second, 20, 9}, // one token still owed from the refill at 500ms
			step{a, 15 * time.Second, 20, 10},
		)},
		{"sources are independent", steps(
			step{a, 0, 100, 10},
			step{b, 0, 100, 10},
		)},
		{"a mapped address is its IPv4 source", steps(
			step{a, 0, 10, 10},
			step{netip.MustParseAddr("::ffff:192.0.2.1"), 0, 1, 0},
		)},
		{"one IPv6 /64 is one source", steps(
			step{netip.MustParseAddr("2001:db8:1:2::1"), 0, 6, 6},
			step{netip.MustParseAddr("2001:db8:1:2:ffff::9"), 0, 6, 4},
			step{netip.MustParseAddr("2001:db8:1:3::1"), 0, 6, 6},
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newConnectLimiter(2, 10, 1024) // 2 a second, bursts of 10
			for i, st := range tt.steps {
				got := 0
				for range st.n {
					if l.allow(st.from, t0.Add(st.at)) {
						got++
					}
				}
				if got != st.want {
					t.Errorf("step %d: %d of %d connects from %s allowed, want %d", i, got, st.n, st.from, st.want)
				}
			}
		})
	}
}

// step is n connects from one source at t0+at, of which want are allowed.
type step struct {
	from netip.Addr
	at   time.Duration
	n    int
	want int
}

func steps(s ...step) []step { return s }

// TestConnectLimiterBounded floods the limiter from 256k sources, as
// spoofed packets would, and checks that it keeps no more buckets than
// allowed while a steady source stays limited.
func TestConnectLimiterBounded(t *testing.T) {
	const maxSources = 1024
	l := newConnectLimiter(1, 5, maxSources)
	now := time.Unix(1_700_000_000, 0)
	steady := netip.MustParseAddr("198.51.100.7")
	allowed := 0
	for i := range 1 << 18 {
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
		if i%1024 == 0 && l.allow(steady, now) {
			allowed++
		}
		if i%1024 == 0 {
			now = now.Add(time.Millisecond)
		}
	}
	if n := l.sources(); n > maxSources {
		t.Errorf("limiter holds %d sources, want at most %d", n, maxSources)
	}
	// 256 tries over 256ms: the burst of 5, a refill and what eviction
	// may forgive.
	if allowed > 32 {
		t.Errorf("steady source allowed %d of 256 connects during the flood, want it limited", allowed)
	}
}

func TestConnectLimiterOff(t *testing.T) {
	l := newConnectLimiter(0, 10, 1024)
	for range 1000 {
		if !l.allow(netip.MustParseAddr("192.0.2.1"), time.Unix(0, 0)) {
			t.Fatal("a limiter with rate 0 refused a connect")
		}
	}
}

// BenchmarkConnectLimiter is the cost the limit adds to a connect, from a
// steady source and from always-new ones (a spoofed flood at the cap).
func BenchmarkConnectLimiter(b *testing.B) {
	b.Run("same-source", func(b *testing.B) {
		l := newConnectLimiter(1e6, 1e6, 65536)
		ip := netip.MustParseAddr("192.0.2.1")
		now := time.Unix(1_700_000_000, 0)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			l.allow(ip, now.Add(time.Duration(i)*time.Microsecond))
		}
	})
	b.Run("new-sources", func(b *testing.B) {
		l := newConnectLimiter(20, 200, 65536)
		now := time.Unix(1_700_000_000, 0)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
		}
	})
}

// TestHandleConnectLimit drives the handler at a fixed time: connects from
// one source past its burst are dropped unanswered with the connect_rate
// reason, while another source connects and announces, and the flooding
// source's own announces (which carry a connection ID) still pass.
func TestHandleConnectLimit(t *testing.T) {
	h := newTestHandler(t, &fakeTracker{peers: testPeers(3)})
	h.limit, h.limitLog = newConnectLimiter(1, 3, 1024), ratelog.New(time.Hour)
	flooder := netip.MustParseAddrPort("198.51.100.1:4000")
	other := netip.MustParseAddrPort("198.51.100.2:4000")
	for i := range 10 {
		s := handlePacket(h, connectPacket(uint32(i)), flooder, testNow)
		if i < 3 {
			if s.reply == nil || replyAction(s.reply) != actionConnect {
				t.Fatalf("connect %d within the burst: reply % x, drop %q", i, s.reply, s.drop)
			}
			continue
		}
		if s.reply != nil || s.drop != frontends.DropConnectRate || s.action != "" {
			t.Fatalf("connect %d past the burst: reply % x, drop %q, action %q; want dropped for connect_rate", i, s.reply, s.drop, s.action)
		}
	}
	if s := handlePacket(h, connectPacket(99), other, testNow); s.reply == nil || replyAction(s.reply) != actionConnect {
		t.Errorf("connect from another source: reply % x, drop %q", s.reply, s.drop)
	}
	for _, from := range []netip.AddrPort{flooder, other} {
		id := mintFor(t, from.Addr(), testNow)
		if s := handlePacket(h, testAnnounce().packet(id, 7), from, testNow); s.reply == nil || replyAction(s.reply) != actionAnnounce {
			t.Errorf("announce from %s: reply % x, drop %q", from, s.reply, s.drop)
		}
	}
	if s := handlePacket(h, connectPacket(100), flooder, testNow.Add(time.Second)); s.reply == nil {
		t.Errorf("connect a second later, with one token refilled: dropped (%q)", s.drop)
	}
}
