package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// dialFrom opens a TCP connection to addr from source, one of the many
// loopback addresses Linux answers on.
func dialFrom(t *testing.T, source, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// closedWithin reports whether the server closes nc within d without
// sending it anything.
func closedWithin(nc net.Conn, d time.Duration) bool {
	if err := nc.SetReadDeadline(time.Now().Add(d)); err != nil {
		return false
	}
	var b [1]byte
	_, err := nc.Read(b[:])
	var ne net.Error
	return err != nil && (!errors.As(err, &ne) || !ne.Timeout())
}

// TestTCPPreAuthFlood reproduces finding 1 of issue 11: hundreds of silent
// connections that hold handshake slots. Those from non-members are
// closed at once; those from a member's address are capped per source,
// and the admitted ones time out; all are counted; and a genuine node's
// forwards keep succeeding throughout.
func TestTCPPreAuthFlood(t *testing.T) {
	trNoLeaks(t)
	const flood = 300
	members := loopbackMembers()
	members.hosts[netip.MustParseAddr("127.0.0.3")] = true // a member's host, compromised
	h := &trHandler{}
	srv := tcpServe(t, func(o *TCPOptions) {
		o.Members = members
		o.Log = nil
	}, h)
	cl := newTestTCP(t, nil)
	if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}

	// Forwards run during the whole flood; each must succeed. New
	// connections are forced by a short idle timeout on a second client.
	fresh := newTestTCP(t, func(o *TCPOptions) { o.IdleTimeout = 5 * time.Millisecond })
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, c := range []*TCP{cl, fresh} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(256)}); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		})
	}

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for range flood {
		conns = append(conns, dialFrom(t, "127.0.0.2", srv.Addr()), dialFrom(t, "127.0.0.3", srv.Addr()))
	}
	// Every non-member connection is closed long before a handshake
	// could time out, and none is left pending.
	for i := 0; i < len(conns); i += 2 {
		if !closedWithin(conns[i], 3*time.Second) {
			t.Fatalf("connection %d from a non-member is still open %s after the flood began", i/2, time.Since(start))
		}
	}
	eventually.True(t, 5*time.Second, "non-members counted", func() bool { return rejected(srv, reasonNotMember) == flood })
	// From the member's address at most MaxPendingPerSource wait at a
	// time; the rest are refused at once, and the waiting ones time out.
	// Every one of them ends as one or the other.
	eventually.True(t, 15*time.Second, "every member-address connection refused or timed out", func() bool {
		return rejected(srv, reasonSourceLimit)+rejected(srv, reasonTimeout) == flood && pendingNow(srv) == 0
	})
	if n := rejected(srv, reasonSourceLimit); n < flood/2 {
		t.Errorf("only %d of %d connections from one address refused at once", n, flood)
	}
	close(stop)
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d forwards failed during the flood (%d ok), first: %v", failed.Load(), ok.Load(), firstErr.Load())
	}
	if ok.Load() == 0 {
		t.Fatal("no forward ran during the flood")
	}
	t.Logf("%d forwards ok during the flood; refused: not_member %d, source_limit %d, timeout %d",
		ok.Load(), rejected(srv, reasonNotMember), rejected(srv, reasonSourceLimit), rejected(srv, reasonTimeout))
}

func pendingNow(tr *TCP) int {
	tr.pendMu.Lock()
	defer tr.pendMu.Unlock()
	return tr.pending
}

// TestTCPPendingLimit checks the total cap on handshakes in progress, over
// several member addresses each within its own cap.
func TestTCPPendingLimit(t *testing.T) {
	trNoLeaks(t)
	members := loopbackMembers()
	sources := []string{"127.0.0.4", "127.0.0.5", "127.0.0.6"}
	for _, s := range sources {
		members.hosts[netip.MustParseAddr(s)] = true
	}
	srv := tcpServe(t, func(o *TCPOptions) {
		o.Members = members
		o.MaxPending = 6
		o.MaxPendingPerSource = 3
		o.HandshakeTimeout = 10 * time.Second // nothing frees a slot during the test
		o.Log = nil
	}, &trHandler{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, s := range sources {
		for range 3 {
			conns = append(conns, dialFrom(t, s, srv.Addr()))
		}
	}
	eventually.True(t, 5*time.Second, "3 over the total refused", func() bool { return rejected(srv, reasonPendingLimit) == 3 })
	if n := pendingNow(srv); n != 6 {
		t.Fatalf("%d handshakes pending; want the cap, 6", n)
	}
	if n := rejected(srv, reasonSourceLimit); n != 0 {
		t.Fatalf("source limit hit %d times; want 0", n)
	}
}

// TestTCPSessionsPerPeer checks that one peer cannot open sessions without
// bound (finding 6).
func TestTCPSessionsPerPeer(t *testing.T) {
	trNoLeaks(t)
	srv := tcpServe(t, func(o *TCPOptions) { o.MaxSessionsPerPeer = 3; o.Log = nil }, &trHandler{})
	var sessions []*tcpSession
	for range 5 {
		sessions = append(sessions, authSession(t, srv))
	}
	eventually.True(t, 5*time.Second, "sessions over the cap refused", func() bool { return rejected(srv, reasonSessionLimit) == 2 })
	if n := tcpSessions(srv); n != 3 {
		t.Fatalf("server holds %d sessions; want 3", n)
	}
	_ = sessions
}

// TestTCPInflightBounded reproduces finding 6: a key holder sends large
// requests on several connections while the handler is slow. The server
// stops reading once MaxInflight bytes of requests are held, before
// decoding more, so the memory it allocates stays near that bound instead
// of growing with what was sent; frames over MaxFrame are refused before
// anything is allocated for them.
func TestTCPInflightBounded(t *testing.T) {
	trNoLeaks(t)
	const (
		maxInflight = 8 << 20
		frames      = 40 // per connection
		conns       = 3
	)
	release := make(chan struct{})
	var inHandler, maxInHandler atomic.Int64
	h := &trHandler{fn: func(ctx context.Context, req Request) (Reply, error) {
		n := inHandler.Add(1)
		for {
			m := maxInHandler.Load()
			if n <= m || maxInHandler.CompareAndSwap(m, n) {
				break
			}
		}
		defer inHandler.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		runtime.KeepAlive(req) // a slow handler holds its request
		return &Ack{}, nil
	}}
	srv := tcpServe(t, func(o *TCPOptions) { o.MaxInflight = maxInflight; o.Log = nil }, h)
	// About 1.9 MiB encoded: just under DefaultMaxFrame.
	req := &ApplyRequest{Changes: manyChanges(30000)}
	payload, err := appendRequest(make([]byte, requestHeaderSize), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(payload) > DefaultMaxFrame || len(payload) < DefaultMaxFrame/2 {
		t.Fatalf("request of %d bytes; want just under %d", len(payload), DefaultMaxFrame)
	}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var sent atomic.Int64
	for range conns {
		s := authSession(t, srv)
		wg.Go(func() {
			frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(payload)), uint32(len(payload)))
			frame = append(frame, payload...)
			for range frames {
				_ = s.nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
				if _, err := s.nc.Write(frame); err != nil {
					return // the server stopped reading: the point
				}
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	eventually.True(t, 5*time.Second, "handlers fill the budget", func() bool { return inHandler.Load() >= int64(maxInflight/len(payload)) })
	// What is live while the requests are held: the server's decoded
	// requests and read buffers, the clients' frames and whatever sits in
	// the TLS connections.
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	close(release)

	held := maxInHandler.Load()
	if limit := int64(maxInflight / len(payload)); held > limit {
		t.Errorf("%d requests held at once; the %d-byte budget allows %d", held, maxInflight, limit)
	}
	live := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	sentBytes := sent.Load() * int64(len(payload))
	t.Logf("sent %d frames (%d MiB), %d held at once, %d MiB more live heap", sent.Load(), sentBytes>>20, held, live>>20)
	if sent.Load() >= conns*frames {
		t.Errorf("the clients wrote all %d frames; the server should have stopped reading", conns*frames)
	}
	if bound := int64(6 * maxInflight); live > bound {
		t.Errorf("%d MiB more live heap while holding requests; want under %d MiB (unbounded: about %d MiB)", live>>20, bound>>20, 3*conns*frames*len(payload)>>20)
	}

	// Oversized frames cost nothing: each is refused on its length. The
	// baseline is the same number of sessions closed without a frame.
	sessionsCost := func(send []byte) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range 20 {
			s := authSession(t, srv)
			if send != nil {
				_, _ = s.nc.Write(send)
				expectClosed(t, s.nc)
			} else {
				s.close()
			}
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	base := sessionsCost(nil)
	big := sessionsCost([]byte{0x00, 0x20, 0x00, 0x01}) // 2 MiB + 1
	if extra := int64(big) - int64(base); extra > 20*DefaultMaxFrame/8 {
		t.Errorf("20 oversized frames cost %d KiB more than 20 idle sessions; want far less than a frame each", extra>>10)
	}
	if n := rejected(srv, reasonFrameTooLarge); n != 20 {
		t.Errorf("frame_too_large counted %d; want 20", n)
	}
}

// TestTCPNotMemberRefused checks that a node the server does not count as
// a member is refused before TLS, counted, and told something it can act
// on.
func TestTCPNotMemberRefused(t *testing.T) {
	trNoLeaks(t)
	h := &trHandler{}
	others := &testMembers{hosts: map[netip.Addr]bool{netip.MustParseAddr("127.0.0.9"): true}}
	srv := tcpServe(t, func(o *TCPOptions) { o.Members = others }, h)
	cl := newTestTCP(t, nil)
	_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(1)})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "does not count this node's address as a member's") {
		t.Fatalf("got %v; want ErrUnreachable saying the node is not a member there", err)
	}
	if h.calls.Load() != 0 {
		t.Fatal("the handler was called")
	}
	eventually.True(t, 2*time.Second, "refusal counted", func() bool { return rejected(srv, reasonNotMember) >= 1 })
}
