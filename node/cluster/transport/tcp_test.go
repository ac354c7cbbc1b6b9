package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

var (
	trKeyOld = bytes.Repeat([]byte{0xa1}, 32)
	trKeyNew = bytes.Repeat([]byte{0xb2}, 32)
)

const trLabel = "test-cluster"

// testMembers is a Members with answers the test sets.
type testMembers struct {
	mu    sync.Mutex
	hosts map[netip.Addr]bool
	names map[string]string // data address → member name
	at    map[string]bool   // member names
}

var loopback = netip.MustParseAddr("127.0.0.1")

// loopbackMembers admits 127.0.0.1 and knows no names.
func loopbackMembers() *testMembers {
	return &testMembers{hosts: map[netip.Addr]bool{loopback: true}, names: map[string]string{}, at: map[string]bool{}}
}

// add makes name a member whose data channel is at addr.
func (m *testMembers) add(name, addr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.names[addr] = name
	m.at[name] = true
}

func (m *testMembers) HostIsMember(ip netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hosts[ip]
}

func (m *testMembers) NameAt(addr string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.names[addr]
	return n, ok
}

func (m *testMembers) IsMember(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.at[name]
}

// newTestTCP returns a shared-key transport on 127.0.0.1 with a free
// port, admitting 127.0.0.1, closed when tb ends. mutate adjusts the
// options first.
func newTestTCP(tb testing.TB, mutate func(*TCPOptions)) *TCP {
	tb.Helper()
	opts := TCPOptions{Bind: "127.0.0.1:0", Keys: [][]byte{trKeyOld}, Label: trLabel, Log: zaptest.NewLogger(tb), Members: loopbackMembers()}
	if mutate != nil {
		mutate(&opts)
	}
	tr, err := NewTCP(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := tr.Close(); err != nil {
			tb.Error(err)
		}
	})
	return tr
}

func tcpServe(tb testing.TB, mutate func(*TCPOptions), h Handler) *TCP {
	tb.Helper()
	tr := newTestTCP(tb, mutate)
	if err := tr.Serve(h); err != nil {
		tb.Fatal(err)
	}
	return tr
}

// tcpSessions counts tr's authenticated connections.
func tcpSessions(tr *TCP) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.sessions)
}

// rejected is how many connections or frames tr refused for reason.
func rejected(tr *TCP, reason string) int {
	return int(testutil.ToFloat64(tr.metrics.rejected.WithLabelValues(reason)))
}

// tcpDialing counts tr's dials to addr in progress.
func tcpDialing(tr *TCP, addr string) int {
	tr.mu.Lock()
	p := tr.pools[addr]
	tr.mu.Unlock()
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, sl := range p.slots {
		if sl.dialing != nil {
			n++
		}
	}
	return n
}

func TestTCPKeys(t *testing.T) {
	k16, k24, k20 := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 24), bytes.Repeat([]byte{3}, 20)
	for _, tc := range []struct {
		name           string
		client, server [][]byte
		ok             bool
	}{
		{"same key", [][]byte{trKeyOld}, [][]byte{trKeyOld}, true},
		{"client rotated first", [][]byte{trKeyNew, trKeyOld}, [][]byte{trKeyOld}, true},
		{"server rotated first", [][]byte{trKeyOld}, [][]byte{trKeyNew, trKeyOld}, true},
		{"new key added second", [][]byte{trKeyOld, trKeyNew}, [][]byte{trKeyNew}, true},
		{"orders differ mid-rotation", [][]byte{trKeyNew, trKeyOld}, [][]byte{trKeyOld, trKeyNew}, true},
		{"16-, 20- and 24-byte keys", [][]byte{k16, k20}, [][]byte{k24, k20}, true},
		{"insecure on both sides", nil, nil, true},
		{"wrong key", [][]byte{trKeyNew}, [][]byte{trKeyOld}, false},
		{"old key removed too early", [][]byte{trKeyOld}, [][]byte{trKeyNew}, false},
		{"no keys against keys", nil, [][]byte{trKeyOld}, false},
		{"keys against no keys", [][]byte{trKeyOld}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, func(o *TCPOptions) { o.Keys, o.Insecure = tc.server, len(tc.server) == 0 }, h)
			cl := newTestTCP(t, func(o *TCPOptions) { o.Keys, o.Insecure = tc.client, len(tc.client) == 0 })
			rep, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(3)})
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := rep.(*Ack); !ok || h.calls.Load() != 1 {
					t.Fatalf("reply %v after %d handler calls", rep, h.calls.Load())
				}
				return
			}
			// A node with the wrong key cannot inject changes.
			if !errors.Is(err, ErrUnreachable) {
				t.Fatalf("got %v; want ErrUnreachable", err)
			}
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			if n := tcpSessions(srv); n != 0 {
				t.Fatalf("server holds %d authenticated connections", n)
			}
		})
	}
}

// TestTCPLabelMismatch checks that clusters with different labels do not
// talk, that the rejections are counted, and that they are logged once
// per period, not once each.
func TestTCPLabelMismatch(t *testing.T) {
	trNoLeaks(t)
	core, logs := observer.New(zapcore.WarnLevel)
	h := &trHandler{}
	srv := tcpServe(t, func(o *TCPOptions) { o.Log = zap.New(core) }, h)
	for _, label := range []string{"", "other-cluster", trLabel + "x"} {
		cl := newTestTCP(t, func(o *TCPOptions) { o.Label = label })
		for range 5 {
			_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{})
			if !errors.Is(err, ErrUnreachable) || !errors.Is(err, errLabelMismatch) {
				t.Fatalf("label %q: got %v; want ErrUnreachable for a label mismatch", label, err)
			}
		}
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("handler called %d times", n)
	}
	eventually.True(t, 2*time.Second, "all rejections counted", func() bool { return rejected(srv, reasonHandshake) >= 15 })
	entries := logs.FilterMessage("data channel: connection refused").All()
	if len(entries) != 1 {
		t.Fatalf("%d rejection lines for 15 rejections; want 1 per period", len(entries))
	}
	if err := entries[0].ContextMap()["error"]; !strings.Contains(err.(string), "label mismatch") {
		t.Fatalf("rejection logged as %v", err)
	}
}

// authSession opens a connection to srv that passed the handshake with
// the right key, for tests that then misbehave.
func authSession(t *testing.T, srv *TCP) *tcpSession {
	t.Helper()
	cl := newTestTCP(t, nil)
	nc, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := cl.handshake(nc, true, "")
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

// expectClosed reads from nc until the server closes it.
func expectClosed(t *testing.T, nc net.Conn) {
	t.Helper()
	if err := nc.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept the connection open")
	}
}

// rawTLS completes a TLS 1.3 handshake with srv and nothing else: a
// client that speaks TLS but not (or not quite) the data channel.
func rawTLS(t *testing.T, srv *TCP) *tls.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // G402: shared-key mode's certificates are throwaway; the test speaks the exchange itself
	if err := tc.Handshake(); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	return tc
}

// TestTCPRawClients checks that clients that do not complete the
// exchange, replay or reflect a proof never reach the handler and do not
// disturb the server.
func TestTCPRawClients(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	key, err := newSharedKey(trKeyOld)
	if err != nil {
		t.Fatal(err)
	}
	hello := appendClientHello(nil, trLabel, []sharedKey{key}, "raw")
	for _, tc := range []struct {
		name string
		// talk misbehaves on a connection to the server. Its writes may
		// fail once the server hangs up; the server's reaction is what the
		// test checks, so their errors are ignored.
		talk func(t *testing.T, srv *TCP) net.Conn
	}{
		{"random bytes", func(t *testing.T, srv *TCP) net.Conn {
			nc := dialFrom(t, "127.0.0.1", srv.Addr())
			_, _ = nc.Write(random(4096))
			return nc
		}},
		{"http", func(t *testing.T, srv *TCP) net.Conn {
			nc := dialFrom(t, "127.0.0.1", srv.Addr())
			_, _ = io.WriteString(nc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			return nc
		}},
		{"tls 1.2", func(t *testing.T, srv *TCP) net.Conn {
			nc := dialFrom(t, "127.0.0.1", srv.Addr())
			tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}) //nolint:gosec // G402: a client that checks nothing, as an attacker's would
			if err := tc.Handshake(); err == nil {
				t.Error("a TLS 1.2 handshake succeeded")
			}
			return nc
		}},
		{"other version", func(t *testing.T, srv *TCP) net.Conn {
			tc := rawTLS(t, srv)
			b := bytes.Clone(hello)
			b[4] = protocolVersion + 1
			_, _ = tc.Write(b)
			return tc
		}},
		{"random proof", func(t *testing.T, srv *TCP) net.Conn {
			tc := rawTLS(t, srv)
			_, _ = tc.Write(hello)
			_, _ = tc.Write(random(proofSize))
			return tc
		}},
		{"server's proof reflected", func(t *testing.T, srv *TCP) net.Conn {
			tc := rawTLS(t, srv)
			_, _ = tc.Write(hello)
			sh := make([]byte, serverHelloSize)
			if _, err := io.ReadFull(tc, sh); err != nil {
				t.Fatal(err)
			}
			_, _ = tc.Write(sh[len(sh)-proofSize:])
			return tc
		}},
		{"proof from another session replayed", func(t *testing.T, srv *TCP) net.Conn {
			// A genuine client's proof, recorded from a session of its
			// own, does not prove the key on this one.
			first := rawTLS(t, srv)
			defer first.Close()
			_, _ = first.Write(hello)
			sh := make([]byte, serverHelloSize)
			if _, err := io.ReadFull(first, sh); err != nil {
				t.Fatal(err)
			}
			proof, err := prove(first.ConnectionState(), key, proofContext(hello, sh[:7], "client"))
			if err != nil {
				t.Fatal(err)
			}
			tc := rawTLS(t, srv)
			_, _ = tc.Write(hello)
			if _, err := io.ReadFull(tc, sh); err != nil {
				t.Fatal(err)
			}
			_, _ = tc.Write(proof)
			return tc
		}},
		{"closed mid-hello", func(t *testing.T, srv *TCP) net.Conn {
			tc := rawTLS(t, srv)
			_, _ = tc.Write(hello[:7])
			_ = tc.CloseWrite()
			return tc
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, nil, h)
			nc := tc.talk(t, srv)
			defer nc.Close()
			expectClosed(t, nc)
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			if n := tcpSessions(srv); n != 0 {
				t.Fatalf("server holds %d authenticated connections", n)
			}
			if _, err := newTestTCP(t, nil).Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
				t.Fatalf("the server no longer answers: %v", err)
			}
		})
	}
}

// TestTCPAuthenticatedGarbage sends bad frames after a good handshake: a
// node with the key but a bug, or a compromised one.
func TestTCPAuthenticatedGarbage(t *testing.T) {
	frame := func(size uint32, body []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, size), body...)
	}
	for _, tc := range []struct {
		name   string
		bytes  []byte
		reason string
	}{
		{"length over max frame", frame(0xffffffff, nil), reasonFrameTooLarge},
		{"length just over max frame", frame(DefaultMaxFrame+1, make([]byte, 1024)), reasonFrameTooLarge},
		{"shorter than a request header", frame(3, []byte{1, 2, 3}), reasonBadFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, nil, h)
			s := authSession(t, srv)
			eventually.True(t, 2*time.Second, "server authenticated the connection", func() bool { return tcpSessions(srv) == 1 })
			_, _ = s.nc.Write(tc.bytes)
			expectClosed(t, s.nc)
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			eventually.True(t, 2*time.Second, "server dropped the connection", func() bool { return tcpSessions(srv) == 0 })
			if n := rejected(srv, tc.reason); n != 1 {
				t.Fatalf("%s counted %d times; want 1", tc.reason, n)
			}
		})
	}

	t.Run("malformed request in a good frame", func(t *testing.T) {
		trNoLeaks(t)
		h := &trHandler{}
		srv := tcpServe(t, nil, h)
		s := authSession(t, srv)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.writeLoop()
		}()
		defer func() { s.close(); <-done }()
		fb := getFrameBuf()
		fb.b = append(fb.b, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 0, 0x7f)
		if err := s.send(t.Context(), fb); err != nil {
			t.Fatal(err)
		}
		p, err := s.readFrame(time.Second, func() bool { return true })
		if err != nil {
			t.Fatal(err)
		}
		if id := binary.BigEndian.Uint64(p); id != 42 {
			t.Fatalf("reply to request %d; want 42", id)
		}
		_, err = decodeReply(p[replyHeaderSize:])
		if re, ok := errors.AsType[RemoteError](err); !ok || !strings.Contains(string(re), "malformed") {
			t.Fatalf("got %v; want a RemoteError about a malformed message", err)
		}
		if n := h.calls.Load(); n != 0 {
			t.Fatalf("handler called %d times", n)
		}
	})
}

// tamperProxy relays connections to target, passing each TLS record from
// the client through tamper once the first skip encrypted records (the
// TLS Finished, the hello and the proof) went by untouched. It records
// every byte the client sent.
type tamperProxy struct {
	ln     net.Listener
	target string
	skip   int
	tamper func(i int, record []byte, toServer, toClient io.Writer)

	relayConns
	mu   sync.Mutex
	sent []byte
}

// relayConns are a test relay's connections and goroutines, closed and
// waited for when the test ends.
type relayConns struct {
	cmu   sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func (r *relayConns) add(cs ...net.Conn) {
	r.cmu.Lock()
	r.conns = append(r.conns, cs...)
	r.cmu.Unlock()
}

// stopOnCleanup closes ln and every connection when t ends, then waits
// for the relay's goroutines.
func (r *relayConns) stopOnCleanup(t *testing.T, ln net.Listener) {
	t.Cleanup(func() {
		ln.Close()
		r.cmu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.cmu.Unlock()
		r.wg.Wait()
	})
}

func newTamperProxy(t *testing.T, target string, skip int, tamper func(i int, record []byte, toServer, toClient io.Writer)) *tamperProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tamperProxy{ln: ln, target: target, skip: skip, tamper: tamper}
	p.wg.Go(p.accept)
	p.stopOnCleanup(t, ln)
	return p
}

func (p *tamperProxy) accept() {
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		sc, err := net.Dial("tcp", p.target)
		if err != nil {
			cc.Close()
			continue
		}
		p.add(cc, sc)
		toClient := &lockedWriter{w: cc}
		p.wg.Go(func() {
			_, _ = io.Copy(toClient, sc)
			cc.Close()
		})
		p.wg.Go(func() {
			p.relay(cc, sc, toClient)
			sc.Close()
		})
	}
}

// relay splits the client's stream into TLS records (type:1 version:2
// length:2 body).
func (p *tamperProxy) relay(cc, sc net.Conn, toClient io.Writer) {
	read := func(n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(cc, b)
		p.mu.Lock()
		p.sent = append(p.sent, b...)
		p.mu.Unlock()
		return b, err
	}
	const appData = 23
	encrypted := 0
	for {
		hdr, err := read(5)
		if err != nil {
			return
		}
		body, err := read(int(binary.BigEndian.Uint16(hdr[3:])))
		if err != nil {
			return
		}
		rec := append(hdr, body...)
		if hdr[0] != appData || encrypted < p.skip {
			if hdr[0] == appData {
				encrypted++
			}
			if _, err := sc.Write(rec); err != nil {
				return
			}
			continue
		}
		p.tamper(encrypted-p.skip, rec, sc, toClient)
		encrypted++
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestTCPTamperedStream checks that records replayed, altered or
// reflected by someone on the path never reach the handler: TLS refuses
// them and the connection closes.
func TestTCPTamperedStream(t *testing.T) {
	const skip = 3 // the client's Finished, hello and proof
	for _, tc := range []struct {
		name    string
		tamper  func(i int, f []byte, srv, cl io.Writer)
		ok      bool  // whether the call must succeed
		handled int64 // requests the handler must see
	}{
		{"untouched", func(_ int, f []byte, srv, _ io.Writer) { _, _ = srv.Write(f) }, true, 1},
		// The reply to the first copy may or may not beat the close.
		{"record replayed", func(_ int, f []byte, srv, _ io.Writer) { _, _ = srv.Write(f); _, _ = srv.Write(f) }, false, 1},
		{"bit flipped", func(_ int, f []byte, srv, _ io.Writer) { f[len(f)-1] ^= 1; _, _ = srv.Write(f) }, false, 0},
		{"length changed", func(_ int, f []byte, srv, _ io.Writer) {
			f[4]--
			_, _ = srv.Write(f[:len(f)-1])
		}, false, 0},
		{"reflected to the sender", func(_ int, f []byte, _, cl io.Writer) { _, _ = cl.Write(f) }, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, nil, h)
			proxy := newTamperProxy(t, srv.Addr(), skip, tc.tamper)
			cl := newTestTCP(t, func(o *TCPOptions) { o.ConnsPerPeer = 1 })
			_, err := cl.Call(trCtx(t, 2*time.Second), proxy.ln.Addr().String(), &FetchRequest{MaxPeers: 1})
			switch {
			case tc.ok && err != nil:
				t.Error(err)
			case !tc.ok && tc.handled == 0 && !errors.Is(err, ErrUnreachable):
				t.Errorf("got %v; want ErrUnreachable", err)
			}
			if !tc.ok {
				eventually.True(t, 3*time.Second, "server closed the tampered connection", func() bool { return tcpSessions(srv) == 0 })
			}
			if n := h.calls.Load(); n != tc.handled {
				t.Fatalf("handler called %d times; want %d", n, tc.handled)
			}

			// Replaying everything the client sent, handshake included,
			// on a new connection gets nothing through either: the
			// server's TLS key share is fresh.
			nc, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			proxy.mu.Lock()
			_, _ = nc.Write(proxy.sent)
			proxy.mu.Unlock()
			expectClosed(t, nc)
			if n := h.calls.Load(); n != tc.handled {
				t.Fatalf("after the replay the handler was called %d times; want %d", n, tc.handled)
			}

			if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
				t.Fatalf("the server no longer answers: %v", err)
			}
		})
	}
}

func TestTCPServerRestart(t *testing.T) {
	trNoLeaks(t)
	h := &trHandler{}
	srv := tcpServe(t, nil, h)
	addr := srv.Addr()
	cl := newTestTCP(t, nil)
	if _, err := cl.Call(trCtx(t, 5*time.Second), addr, &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Call(trCtx(t, 5*time.Second), addr, &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("while down: got %v; want ErrUnreachable", err)
	}
	tcpServe(t, func(o *TCPOptions) { o.Bind = addr }, h)
	attempts := 0
	eventually.True(t, 3*time.Second, "the client reconnects", func() bool {
		attempts++
		_, err := cl.Call(trCtx(t, time.Second), addr, &ApplyRequest{})
		return err == nil
	})
	if attempts > 3 {
		t.Errorf("took %d calls to reconnect", attempts)
	}
}

func TestTCPIdleConnectionsClose(t *testing.T) {
	trNoLeaks(t)
	idle := func(o *TCPOptions) { o.IdleTimeout = 30 * time.Millisecond }
	srv := tcpServe(t, idle, &trHandler{})
	cl := newTestTCP(t, idle)
	for range 2 {
		if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
			t.Fatal(err)
		}
		eventually.True(t, 2*time.Second, "idle connections close", func() bool {
			return tcpSessions(cl) == 0 && tcpSessions(srv) == 0
		})
	}
}

func TestTCPConnsPerPeer(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(string(rune('0'+n)), func(t *testing.T) {
			trNoLeaks(t)
			srv := tcpServe(t, nil, &trHandler{})
			cl := newTestTCP(t, func(o *TCPOptions) { o.ConnsPerPeer = n })
			var wg sync.WaitGroup
			for range 20 {
				wg.Go(func() {
					if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			eventually.True(t, 2*time.Second, "pool fills", func() bool { return tcpSessions(cl) == n })
			// With no dial in flight none can follow without another
			// call, so the server's count is final once it catches up.
			if d := tcpDialing(cl, srv.Addr()); d != 0 {
				t.Fatalf("%d dials still in flight with the pool full", d)
			}
			eventually.True(t, 2*time.Second, "server sees the pool's connections", func() bool { return tcpSessions(srv) >= n })
			if got := tcpSessions(srv); got != n {
				t.Fatalf("server has %d connections; want %d", got, n)
			}
		})
	}
}

func TestTCPFrameLimit(t *testing.T) {
	trNoLeaks(t)
	small := func(o *TCPOptions) { o.MaxFrame = minMaxFrame }
	h := &trHandler{fn: func(_ context.Context, req Request) (Reply, error) {
		if r, ok := req.(*FetchRequest); ok {
			return &FetchReply{Peers: manySwarmPeers(r.MaxPeers)}, nil
		}
		return &Ack{}, nil
	}}
	srv := tcpServe(t, small, h)
	cl := newTestTCP(t, small)
	ctx := trCtx(t, 5*time.Second)

	_, err := cl.Call(ctx, srv.Addr(), &ApplyRequest{Changes: manyChanges(200)})
	if !errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("oversized request: got %v; want ErrFrameTooLarge only", err)
	}
	if h.calls.Load() != 0 {
		t.Fatal("an oversized request reached the handler")
	}
	if _, err := cl.Call(ctx, srv.Addr(), &ApplyRequest{Changes: manyChanges(50)}); err != nil {
		t.Fatalf("request within the limit: %v", err)
	}
	_, err = cl.Call(ctx, srv.Addr(), &FetchRequest{MaxPeers: 500})
	if re, ok := errors.AsType[RemoteError](err); !ok || !strings.Contains(string(re), "frame limit") {
		t.Fatalf("oversized reply: got %v; want a RemoteError about the frame limit", err)
	}
	if _, err := cl.Call(ctx, srv.Addr(), &FetchRequest{MaxPeers: 10}); err != nil {
		t.Fatalf("the connection did not survive an oversized reply: %v", err)
	}
}

func TestNewTCPOptions(t *testing.T) {
	keys := func(n int) [][]byte {
		ks := make([][]byte, n)
		for i := range ks {
			ks[i] = bytes.Repeat([]byte{byte(i)}, 16)
		}
		return ks
	}
	m := loopbackMembers()
	for _, tc := range []struct {
		name string
		opts TCPOptions
		want string // error substring; empty: valid
	}{
		{"insecure", TCPOptions{Insecure: true, Members: m}, ""},
		{"nothing", TCPOptions{Members: m}, "neither certificates nor keys"},
		{"no members", TCPOptions{Keys: keys(1)}, "Members"},
		{"three key sizes", TCPOptions{Keys: [][]byte{make([]byte, 16), make([]byte, 24), make([]byte, 32)}, Members: m}, ""},
		{"15-byte key", TCPOptions{Keys: [][]byte{make([]byte, 15)}, Members: m}, "keys[0]"},
		{"empty key", TCPOptions{Keys: [][]byte{{}}, Members: m}, "keys[0]"},
		{"16 keys", TCPOptions{Keys: keys(16), Members: m}, ""},
		{"17 keys", TCPOptions{Keys: keys(17), Members: m}, "17 keys"},
		{"255-byte label", TCPOptions{Keys: keys(1), Members: m, Label: strings.Repeat("l", 255)}, ""},
		{"256-byte label", TCPOptions{Keys: keys(1), Members: m, Label: strings.Repeat("l", 256)}, "label"},
		{"negative dial timeout", TCPOptions{Keys: keys(1), Members: m, DialTimeout: -1}, "dial timeout"},
		{"negative conns", TCPOptions{Keys: keys(1), Members: m, ConnsPerPeer: -1}, "conns per peer"},
		{"tiny max frame", TCPOptions{Keys: keys(1), Members: m, MaxFrame: 100}, "max frame"},
		{"max frame over inflight", TCPOptions{Keys: keys(1), Members: m, MaxFrame: 8 << 20, MaxInflight: 4 << 20}, "max frame"},
		{"missing certificate files", TCPOptions{Certs: &CertFiles{CA: "/nonexistent/ca.pem", Cert: "/nonexistent/n1.pem", Key: "/nonexistent/n1-key.pem"}, Members: m}, "nonexistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewTCP(tc.opts)
			if tc.want == "" && err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("NewTCP: %v; want an error mentioning %q", err, tc.want)
			}
			if tr != nil {
				tr.Close()
			}
		})
	}
}

func TestTCPAddr(t *testing.T) {
	trNoLeaks(t)
	tr := newTestTCP(t, nil)
	if got := tr.Addr(); got != "127.0.0.1:0" {
		t.Errorf("before Serve: %q; want Bind", got)
	}
	if err := tr.Serve(&trHandler{}); err != nil {
		t.Fatal(err)
	}
	if got := tr.Addr(); !strings.HasPrefix(got, "127.0.0.1:") || strings.HasSuffix(got, ":0") {
		t.Errorf("after Serve: %q; want the listener's port", got)
	}
	if err := tr.Serve(&trHandler{}); err == nil {
		t.Error("a second Serve succeeded")
	}
	adv := newTestTCP(t, nil)
	if err := adv.Serve(&trHandler{}); err != nil {
		t.Fatal(err)
	}
	if err := adv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := adv.Serve(&trHandler{}); err == nil {
		t.Error("Serve after Close succeeded")
	}
}

// BenchmarkTCPCallApply measures forwarding one batch of 256 changes and
// waiting for the ack, over loopback: one caller at a time, and many.
func BenchmarkTCPCallApply(b *testing.B) {
	quiet := func(o *TCPOptions) { o.Log = nil }
	srv := tcpServe(b, quiet, &trHandler{})
	cl := newTestTCP(b, quiet)
	req := &ApplyRequest{Changes: manyChanges(256)}
	ctx := context.Background()
	if _, err := cl.Call(ctx, srv.Addr(), req); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := cl.Call(ctx, srv.Addr(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := cl.Call(ctx, srv.Addr(), req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// TestTCPSilentConnectionIsReplaced: after a network cut an established
// connection neither fails nor delivers. A call that waited on it for
// silentConnAfter without receiving anything closes it, so once the
// network is back the next call dials afresh instead of timing out on the
// dead connection too.
func TestTCPSilentConnectionIsReplaced(t *testing.T) {
	trNoLeaks(t)
	srv := tcpServe(t, nil, &trHandler{})
	var (
		mu      sync.Mutex
		cut     bool
		zombies = map[io.Writer]bool{} // connections that were cut
	)
	proxy := newTamperProxy(t, srv.Addr(), 3, func(_ int, frame []byte, toServer, _ io.Writer) { // past the Finished, hello and proof
		mu.Lock()
		if cut {
			zombies[toServer] = true
		}
		drop := zombies[toServer]
		mu.Unlock()
		if !drop {
			_, _ = toServer.Write(frame)
		}
	})
	addr := proxy.ln.Addr().String()
	cl := newTestTCP(t, func(o *TCPOptions) { o.ConnsPerPeer = 1 })
	if _, err := cl.Call(trCtx(t, 5*time.Second), addr, &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	cut = true
	mu.Unlock()
	// Short calls, as reads make, each give up long before the connection
	// counts as silent; together they find it so, and it is closed.
	cl.mu.Lock()
	pool := cl.pools[addr]
	cl.mu.Unlock()
	pool.mu.Lock()
	first := pool.slots[0].conn
	pool.mu.Unlock()
	start := time.Now()
	for first.usable() {
		if time.Since(start) > 3*silentConnAfter {
			t.Fatalf("the silent connection is still open after %s", time.Since(start))
		}
		if _, err := cl.Call(trCtx(t, 300*time.Millisecond), addr, &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
			t.Fatalf("over a cut connection: got %v; want ErrUnreachable", err)
		}
	}
	if took := time.Since(start); took < silentConnAfter {
		t.Errorf("connection closed after %s of silence, before %s", took, silentConnAfter)
	}
	mu.Lock()
	cut = false // the network is back; the old connection stays dead
	mu.Unlock()
	if _, err := cl.Call(trCtx(t, 3*time.Second), addr, &ApplyRequest{}); err != nil {
		t.Fatalf("after the network came back: %v", err)
	}
}
