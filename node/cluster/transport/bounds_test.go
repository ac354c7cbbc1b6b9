package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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

// silentFlood opens conns connections to addr from source that say
// nothing, each reopened as soon as the server closes it if reopen, until
// stop. It counts the connections the server closed.
func silentFlood(wg *sync.WaitGroup, source, addr string, conns int, reopen bool, stop <-chan struct{}) *atomic.Int64 {
	var closed atomic.Int64
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: time.Second}
	for range conns {
		wg.Go(func() {
			buf := make([]byte, 1)
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := d.Dial("tcp", addr)
				if err != nil {
					continue
				}
				_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = nc.Read(buf)
				nc.Close()
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					closed.Add(1)
				}
				if !reopen {
					return
				}
			}
		})
	}
	return &closed
}

// TestTCPPreAuthFlood reproduces finding 1 of issue 11 and case 3 of
// issue 17: 300 silent connections from an address no member is at, and
// 300 from the very address the member's own connections come from,
// reopened as fast as they are closed. Silent connections hold no
// handshake slot and yield to connections that talk, so the member's
// forwards, on the connections it keeps and on fresh ones, all succeed;
// the pool never holds more than its bound, and every connection the
// server closed is counted.
func TestTCPPreAuthFlood(t *testing.T) {
	trNoLeaks(t)
	const (
		flood    = 300
		forwards = 10 // per client
	)
	h := &trHandler{}
	srv := tcpServe(t, func(o *TCPOptions) { o.Log = nil }, h)
	cl := newTestTCP(t, nil) // dials from 127.0.0.1, like the flood below
	if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var floodWG, fwdWG sync.WaitGroup
	outsider := silentFlood(&floodWG, "127.0.0.2", srv.Addr(), flood, false, stop)
	member := silentFlood(&floodWG, "127.0.0.1", srv.Addr(), flood, true, stop)
	stopFlood := sync.OnceFunc(func() {
		close(stop)
		floodWG.Wait()
	})
	defer stopFlood()
	var most atomic.Int64
	fwdWG.Go(func() {
		for {
			most.Store(max(most.Load(), int64(pendingNow(srv))))
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	eventually.True(t, 20*time.Second, "both floods reconnect", func() bool {
		return outsider.Load() == flood && member.Load() > flood
	})

	// Forwards during the flood; each must succeed: on the connections
	// the member keeps, and on fresh ones, from a new transport each time.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	call := func(c *TCP) {
		if _, err := c.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(256)}); err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err)
		} else {
			ok.Add(1)
		}
	}
	fwdWG.Go(func() {
		for range forwards {
			call(cl)
		}
	})
	fwdWG.Go(func() {
		for range forwards {
			fresh, err := NewTCP(TCPOptions{Keys: [][]byte{trKeyOld}, Label: trLabel, Members: loopbackMembers(), ConnsPerPeer: 1})
			if err != nil {
				t.Error(err)
				return
			}
			call(fresh)
			fresh.Close()
		}
	})
	for ok.Load()+failed.Load() < 2*forwards {
		time.Sleep(10 * time.Millisecond)
	}
	stopFlood()
	fwdWG.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d forwards failed during the flood, first: %v; silent %d pending %d source %d timeout %d handshake %d; closed %d/%d", failed.Load(), 2*forwards, firstErr.Load(), rejected(srv, reasonSilent), rejected(srv, reasonPendingLimit), rejected(srv, reasonSourceLimit), rejected(srv, reasonTimeout), rejected(srv, reasonHandshake), outsider.Load(), member.Load())
	}
	if m := most.Load(); m > DefaultMaxPending {
		t.Errorf("%d connections pending at once; the bound is %d", m, DefaultMaxPending)
	}
	eventually.True(t, 5*time.Second, "nothing left pending", func() bool { return pendingNow(srv) == 0 })
	// A connection is counted just after it is closed, so the count
	// catches up with what the flood saw; it is at most the connections
	// open when the flood stopped ahead.
	closed := outsider.Load() + member.Load()
	counted := func() int64 {
		return int64(rejected(srv, reasonSilent) + rejected(srv, reasonPendingLimit) + rejected(srv, reasonSourceLimit))
	}
	eventually.True(t, 5*time.Second, "every closed flood connection counted", func() bool { return counted() >= closed })
	if n := counted(); n > closed+2*flood {
		t.Errorf("the server closed %d flood connections and counted %d", closed, n)
	}
	if n := rejected(srv, reasonSourceLimit); n == 0 {
		t.Error("no connection of the outsider's counted against its source limit")
	}
	if n := rejected(srv, reasonTimeout) + rejected(srv, reasonHandshake); n != 0 {
		t.Errorf("%d connections failed a handshake; the member's never should", n)
	}
	t.Logf("%d forwards ok; flood closed %d (outsider) and %d (member's address); refused: silent %d, pending_limit %d, source_limit %d",
		ok.Load(), outsider.Load(), member.Load(), rejected(srv, reasonSilent), rejected(srv, reasonPendingLimit), rejected(srv, reasonSourceLimit))
}

func pendingNow(tr *TCP) int { return tr.pre.len() }

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

// TestTCPMemberFromAnyAddress is case 2 of issue 17: a node whose
// connections come from an address no member is known at (NAT, a host
// with several addresses) is served, because it proves the key; a caller
// there without the key is refused and counted.
func TestTCPMemberFromAnyAddress(t *testing.T) {
	trNoLeaks(t)
	h := &trHandler{}
	elsewhere := &testMembers{hosts: map[netip.Addr]bool{netip.MustParseAddr("192.0.2.9"): true}}
	var mu sync.Mutex
	var told []string
	srv := tcpServe(t, func(o *TCPOptions) {
		o.Members = elsewhere
		o.Refused = func(remote netip.Addr, reason string, _ error) {
			mu.Lock()
			told = append(told, remote.String()+" "+reason)
			mu.Unlock()
		}
	}, h)
	cl := newTestTCP(t, nil)
	if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(1)}); err != nil {
		t.Fatalf("a key holder from an unadvertised address: %v", err)
	}
	if h.calls.Load() != 1 {
		t.Fatalf("handler called %d times; want 1", h.calls.Load())
	}
	stranger := newTestTCP(t, func(o *TCPOptions) { o.Keys = [][]byte{trKeyNew} })
	if _, err := stranger.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("a caller without the key: got %v; want ErrUnreachable", err)
	}
	if h.calls.Load() != 1 {
		t.Fatal("the handler was called for a caller without the key")
	}
	eventually.True(t, 2*time.Second, "refusal counted", func() bool { return rejected(srv, reasonHandshake) >= 1 })
	eventually.True(t, 2*time.Second, "the node told", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(told) > 0 && told[0] == "127.0.0.1 handshake"
	})
	// A silent connection from the same address is counted, and the
	// node is not told: it says nothing of the member there.
	silent := dialFrom(t, "127.0.0.1", srv.Addr())
	defer silent.Close()
	eventually.True(t, 5*time.Second, "silent connection counted", func() bool { return rejected(srv, reasonSilent) == 1 })
	mu.Lock()
	defer mu.Unlock()
	for _, r := range told {
		if r != "127.0.0.1 handshake" {
			t.Fatalf("the node was told of %q; want only the failed handshakes", r)
		}
	}
}

// TestTCPMembersShareAddress is case 1 of issue 17: nine nodes on one
// address, each keeping two connections to a tenth. Their sessions are
// counted per node, as their hellos name them, so none is refused.
func TestTCPMembersShareAddress(t *testing.T) {
	trNoLeaks(t)
	members := loopbackMembers()
	var names []string
	for i := range 9 {
		names = append(names, fmt.Sprintf("n%d", i+1))
		members.add(names[i], fmt.Sprintf("127.0.0.1:%d", 1000+i))
	}
	srv := tcpServe(t, func(o *TCPOptions) { o.Members = members }, &trHandler{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for _, name := range names {
		cl := newTestTCP(t, func(o *TCPOptions) { o.Name = name })
		wg.Go(func() {
			for range 20 {
				if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(4)}); err != nil {
					failed.Add(1)
					t.Errorf("%s: %v", name, err)
				}
			}
		})
	}
	wg.Wait()
	if n := rejected(srv, reasonSessionLimit); n != 0 {
		t.Errorf("%d sessions refused for the session limit; want none", n)
	}
	eventually.True(t, 5*time.Second, "two sessions per node", func() bool { return tcpSessions(srv) == 2*len(names) })
}

// TestTCPLocalAddr checks that connections to other nodes leave from
// LocalAddr.
func TestTCPLocalAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		got <- remoteHost(nc).String()
		nc.Close()
	}()
	cl := newTestTCP(t, func(o *TCPOptions) { o.LocalAddr = "127.0.0.5"; o.Log = nil })
	_, _ = cl.Call(trCtx(t, 5*time.Second), ln.Addr().String(), &ApplyRequest{})
	if src := <-got; src != "127.0.0.5" {
		t.Fatalf("the connection came from %s; want 127.0.0.5", src)
	}
	if _, err := NewTCP(TCPOptions{LocalAddr: "not-an-ip", Keys: [][]byte{trKeyOld}, Members: loopbackMembers()}); err == nil || !strings.Contains(err.Error(), "local address") {
		t.Fatalf("NewTCP with a bad local address: %v; want an error naming it", err)
	}
}

// TestTCPDialFailuresCounted checks that this node's failed connections
// to others are counted by why, so an operator sees a node refusing it.
func TestTCPDialFailuresCounted(t *testing.T) {
	trNoLeaks(t)
	dialFailures := func(tr *TCP, reason string) int {
		return int(testutil.ToFloat64(tr.metrics.dialFailed.WithLabelValues(reason)))
	}
	// unreachable: nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	cl := newTestTCP(t, func(o *TCPOptions) { o.Log = nil; o.ConnsPerPeer = 1 })
	if _, err := cl.Call(trCtx(t, 5*time.Second), dead, &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("call to nothing: %v", err)
	}
	// refused: the node closes the connection at once, as a full pool would.
	closer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	go func() {
		for {
			nc, err := closer.Accept()
			if err != nil {
				return
			}
			nc.Close()
		}
	}()
	if _, err := cl.Call(trCtx(t, 5*time.Second), closer.Addr().String(), &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("call to a node that hangs up: %v", err)
	}
	// handshake: the node holds other keys.
	other := tcpServe(t, func(o *TCPOptions) { o.Keys = [][]byte{trKeyNew}; o.Log = nil }, &trHandler{})
	if _, err := cl.Call(trCtx(t, 5*time.Second), other.Addr(), &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("call to a node with other keys: %v", err)
	}
	for reason, want := range map[string]int{dialUnreachable: 1, dialRefused: 1, dialHandshake: 1, dialTimeout: 0} {
		if got := dialFailures(cl, reason); got != want {
			t.Errorf("dial failures %s: %d; want %d", reason, got, want)
		}
	}
}
