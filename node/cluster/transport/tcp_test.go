package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

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

// newTestTCP returns a transport on 127.0.0.1 with a free port, closed
// when tb ends. mutate adjusts the options first.
func newTestTCP(tb testing.TB, mutate func(*TCPOptions)) *TCP {
	tb.Helper()
	opts := TCPOptions{Bind: "127.0.0.1:0", Keys: [][]byte{trKeyOld}, Label: trLabel, Log: zaptest.NewLogger(tb)}
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

// tcpDeadAddr returns a local address nothing listens on.
func tcpDeadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// tcpSessions counts tr's authenticated connections.
func tcpSessions(tr *TCP) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.sessions)
}

func TestTCPKeys(t *testing.T) {
	k16, k24 := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 24)
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
		{"16- and 24-byte keys", [][]byte{k16, k24}, [][]byte{k24}, true},
		{"no keys on either side", nil, nil, true},
		{"wrong key", [][]byte{trKeyNew}, [][]byte{trKeyOld}, false},
		{"old key removed too early", [][]byte{trKeyOld}, [][]byte{trKeyNew}, false},
		{"no keys against keys", nil, [][]byte{trKeyOld}, false},
		{"keys against no keys", [][]byte{trKeyOld}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, func(o *TCPOptions) { o.Keys = tc.server }, h)
			cl := newTestTCP(t, func(o *TCPOptions) { o.Keys = tc.client })
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
// talk, and that the rejections are logged once per period, not once each.
func TestTCPLabelMismatch(t *testing.T) {
	trNoLeaks(t)
	core, logs := observer.New(zapcore.WarnLevel)
	h := &trHandler{}
	srv := tcpServe(t, func(o *TCPOptions) { o.Log = zap.New(core) }, h)
	for _, label := range []string{"", "other-cluster", trLabel + "x"} {
		cl := newTestTCP(t, func(o *TCPOptions) { o.Label = label })
		for range 5 {
			_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{})
			if !errors.Is(err, ErrUnreachable) {
				t.Fatalf("label %q: got %v; want ErrUnreachable", label, err)
			}
		}
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("handler called %d times", n)
	}
	trEventually(t, 2*time.Second, "a rejection is logged", func() bool { return logs.Len() > 0 })
	entries := logs.FilterMessage("data channel: connection rejected").All()
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
	s, err := cl.handshake(nc, true)
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

func TestTCPRawClients(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	hello := func() []byte {
		b := append([]byte(clientMagic), protocolVersion, byte(len(trLabel)))
		b = append(b, trLabel...)
		return append(b, random(nonceSize)...)
	}
	for _, tc := range []struct {
		name string
		// talk misbehaves on a raw connection to the server.
		talk func(t *testing.T, nc net.Conn)
	}{
		{"random bytes", func(t *testing.T, nc net.Conn) { nc.Write(random(4096)) }},
		{"http", func(t *testing.T, nc net.Conn) { io.WriteString(nc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") }},
		{"other version", func(t *testing.T, nc net.Conn) {
			b := hello()
			b[4] = protocolVersion + 1
			nc.Write(b)
		}},
		{"random proof", func(t *testing.T, nc net.Conn) {
			nc.Write(hello())
			nc.Write(random(proofSize))
		}},
		{"server's proof reflected", func(t *testing.T, nc net.Conn) {
			nc.Write(hello())
			sh := make([]byte, len(serverMagic)+1+nonceSize+1+proofSize)
			if _, err := io.ReadFull(nc, sh); err != nil {
				t.Fatal(err)
			}
			nc.Write(sh[len(sh)-proofSize:])
		}},
		{"closed mid-hello", func(t *testing.T, nc net.Conn) {
			nc.Write(hello()[:10])
			nc.(*net.TCPConn).CloseWrite()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, nil, h)
			nc, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			tc.talk(t, nc)
			expectClosed(t, nc)
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			if _, err := newTestTCP(t, nil).Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
				t.Fatalf("the server no longer answers: %v", err)
			}
		})
	}
}

// TestTCPAuthenticatedGarbage sends bad frames after a good handshake: a
// node with the key but a bug, or an attacker between two nodes.
func TestTCPAuthenticatedGarbage(t *testing.T) {
	frame := func(size uint32, body []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, size), body...)
	}
	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"length over max frame", frame(0xffffffff, nil)},
		{"length just over max frame", frame(defaultMaxFrame+gcmTagSize+1, make([]byte, 1024))},
		{"length under the tag size", frame(3, []byte{1, 2, 3})},
		{"random sealed bytes", frame(100, bytes.Repeat([]byte{7}, 100))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, nil, h)
			s := authSession(t, srv)
			trEventually(t, 2*time.Second, "server authenticated the connection", func() bool { return tcpSessions(srv) == 1 })
			s.nc.Write(tc.bytes)
			expectClosed(t, s.nc)
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			trEventually(t, 2*time.Second, "server dropped the connection", func() bool { return tcpSessions(srv) == 0 })
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

// tamperProxy relays connections to target, passing the handshake through
// untouched and each frame from the client through tamper, which decides
// what the server (and the client) get instead. It records every byte the
// client sent.
type tamperProxy struct {
	ln     net.Listener
	target string
	tamper func(i int, frame []byte, toServer, toClient io.Writer)

	mu    sync.Mutex
	sent  []byte
	conns []net.Conn
	wg    sync.WaitGroup
}

func newTamperProxy(t *testing.T, target string, tamper func(i int, frame []byte, toServer, toClient io.Writer)) *tamperProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tamperProxy{ln: ln, target: target, tamper: tamper}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
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
		p.mu.Lock()
		p.conns = append(p.conns, cc, sc)
		p.mu.Unlock()
		toClient := &lockedWriter{w: cc}
		p.wg.Go(func() {
			io.Copy(toClient, sc)
			cc.Close()
		})
		p.wg.Go(func() {
			p.relay(cc, sc, toClient)
			sc.Close()
		})
	}
}

func (p *tamperProxy) relay(cc, sc net.Conn, toClient io.Writer) {
	read := func(n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(cc, b)
		p.mu.Lock()
		p.sent = append(p.sent, b...)
		p.mu.Unlock()
		return b, err
	}
	// The client hello, then, once the server answered, the client proof.
	hdr, err := read(len(clientMagic) + 2)
	if err != nil {
		return
	}
	for _, n := range []int{int(hdr[5]) + nonceSize, proofSize} {
		b, err := read(n)
		if err != nil {
			return
		}
		if _, err := sc.Write(append(hdr, b...)); err != nil {
			return
		}
		hdr = nil
	}
	for i := 0; ; i++ {
		size, err := read(4)
		if err != nil {
			return
		}
		body, err := read(int(binary.BigEndian.Uint32(size)))
		if err != nil {
			return
		}
		p.tamper(i, append(size, body...), sc, toClient)
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

// TestTCPTamperedStream checks that frames replayed, reordered, dropped,
// altered or reflected by someone on the path never reach the handler.
func TestTCPTamperedStream(t *testing.T) {
	var held []byte
	for _, tc := range []struct {
		name    string
		calls   int // made at once
		tamper  func(i int, f []byte, srv, cl io.Writer)
		ok      bool  // whether the calls must succeed
		handled int64 // requests the handler must see
	}{
		{"untouched", 2, func(_ int, f []byte, srv, _ io.Writer) { srv.Write(f) }, true, 2},
		{"frame replayed", 1, func(_ int, f []byte, srv, _ io.Writer) { srv.Write(f); srv.Write(f) }, false, 1},
		{"frame dropped", 2, func(i int, f []byte, srv, _ io.Writer) {
			if i > 0 {
				srv.Write(f)
			}
		}, false, 0},
		{"frames swapped", 2, func(i int, f []byte, srv, _ io.Writer) {
			if i == 0 {
				held = f
				return
			}
			srv.Write(f)
			srv.Write(held)
		}, false, 0},
		{"bit flipped", 1, func(_ int, f []byte, srv, _ io.Writer) { f[len(f)-1] ^= 1; srv.Write(f) }, false, 0},
		{"length changed", 1, func(_ int, f []byte, srv, _ io.Writer) {
			f[3]--
			srv.Write(f[:len(f)-1])
		}, false, 0},
		{"reflected to the sender", 1, func(_ int, f []byte, _, cl io.Writer) { cl.Write(f) }, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srv := tcpServe(t, nil, h)
			proxy := newTamperProxy(t, srv.Addr(), tc.tamper)
			cl := newTestTCP(t, func(o *TCPOptions) { o.ConnsPerPeer = 1 })
			errs := make(chan error, tc.calls)
			for i := range tc.calls {
				go func() {
					_, err := cl.Call(trCtx(t, 2*time.Second), proxy.ln.Addr().String(), &FetchRequest{MaxPeers: i})
					errs <- err
				}()
			}
			for range tc.calls {
				err := <-errs
				switch {
				case tc.ok && err != nil:
					t.Error(err)
				case !tc.ok && tc.handled == 0 && !errors.Is(err, ErrUnreachable):
					t.Errorf("got %v; want ErrUnreachable", err)
				}
			}
			if !tc.ok {
				trEventually(t, 2*time.Second, "server closed the tampered connection", func() bool { return tcpSessions(srv) == 0 })
			}
			if n := h.calls.Load(); n != tc.handled {
				t.Fatalf("handler called %d times; want %d", n, tc.handled)
			}

			// Replaying everything the client sent, handshake included,
			// on a new connection gets nothing through either: the
			// server's nonce is fresh.
			nc, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			proxy.mu.Lock()
			nc.Write(proxy.sent)
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
	trEventually(t, 3*time.Second, "the client reconnects", func() bool {
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
		trEventually(t, 2*time.Second, "idle connections close", func() bool {
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
			trEventually(t, 2*time.Second, "pool fills", func() bool { return tcpSessions(cl) == n })
			time.Sleep(20 * time.Millisecond) // would a stray dial show up?
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
	for _, tc := range []struct {
		name string
		opts TCPOptions
		ok   bool
	}{
		{"zero", TCPOptions{}, true},
		{"three key sizes", TCPOptions{Keys: [][]byte{make([]byte, 16), make([]byte, 24), make([]byte, 32)}}, true},
		{"20-byte key", TCPOptions{Keys: [][]byte{make([]byte, 20)}}, false},
		{"empty key", TCPOptions{Keys: [][]byte{{}}}, false},
		{"16 keys", TCPOptions{Keys: keys(16)}, true},
		{"17 keys", TCPOptions{Keys: keys(17)}, false},
		{"255-byte label", TCPOptions{Label: strings.Repeat("l", 255)}, true},
		{"256-byte label", TCPOptions{Label: strings.Repeat("l", 256)}, false},
		{"negative dial timeout", TCPOptions{DialTimeout: -1}, false},
		{"negative conns", TCPOptions{ConnsPerPeer: -1}, false},
		{"tiny max frame", TCPOptions{MaxFrame: 100}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewTCP(tc.opts)
			if tc.ok != (err == nil) {
				t.Fatalf("NewTCP: %v; want ok %v", err, tc.ok)
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
	adv := newTestTCP(t, func(o *TCPOptions) { o.Advertise = "tracker-1.example:7001" })
	if err := adv.Serve(&trHandler{}); err != nil {
		t.Fatal(err)
	}
	if got := adv.Addr(); got != "tracker-1.example:7001" {
		t.Errorf("with Advertise: %q", got)
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
