package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// These tests check the properties the data channel claims (issue 11,
// finding 3), each against the attack it stops.

// clientSession returns the one session tr dialed.
func clientSession(t *testing.T, tr *TCP) *tls.Conn {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.sessions) != 1 {
		t.Fatalf("%d sessions; want 1", len(tr.sessions))
	}
	for s := range tr.sessions {
		return s.nc.(*tls.Conn)
	}
	return nil
}

// clientHelloExtensions parses the extension types of the TLS ClientHello
// at the start of a client's byte stream.
func clientHelloExtensions(t *testing.T, stream []byte) map[uint16]bool {
	t.Helper()
	fail := func(what string) map[uint16]bool { t.Fatalf("captured ClientHello: %s", what); return nil }
	if len(stream) < 9 || stream[0] != 22 || stream[5] != 1 {
		return fail("not a handshake record holding a ClientHello")
	}
	n := int(stream[6])<<16 | int(stream[7])<<8 | int(stream[8])
	if len(stream) < 9+n {
		return fail("split over records")
	}
	p := stream[9 : 9+n] // after the record header (5) and handshake header (4)
	skip := func(n int) bool {
		if len(p) < n {
			return false
		}
		p = p[n:]
		return true
	}
	vec := func(lenBytes int) bool {
		if len(p) < lenBytes {
			return false
		}
		n := 0
		for _, b := range p[:lenBytes] {
			n = n<<8 | int(b)
		}
		return skip(lenBytes + n)
	}
	if !skip(2+32) || !vec(1) || !vec(2) || !vec(1) || len(p) < 2 {
		return fail("truncated")
	}
	p = p[2:]
	exts := map[uint16]bool{}
	for len(p) >= 4 {
		exts[binary.BigEndian.Uint16(p)] = true
		n := int(binary.BigEndian.Uint16(p[2:]))
		if !skip(4 + n) {
			return fail("truncated extension")
		}
	}
	return exts
}

// TestTCPForwardSecrecy checks what makes a recorded session useless to
// someone who later learns the shared key: the key never enters the TLS
// key schedule (no pre-shared key is offered, and sessions are never
// resumed), every session runs a fresh ECDHE exchange, so two sessions
// between the same nodes under the same key have unrelated secrets, and
// nothing of the request, the key or its id is on the wire in the clear.
func TestTCPForwardSecrecy(t *testing.T) {
	trNoLeaks(t)
	var marker bittorrent.PeerID
	copy(marker[:], "forward-secrecy-mark")
	var got []bittorrent.Change
	var mu sync.Mutex
	h := &trHandler{fn: func(_ context.Context, req Request) (Reply, error) {
		mu.Lock()
		got = req.(*ApplyRequest).Changes
		mu.Unlock()
		return &Ack{}, nil
	}}
	srv := tcpServe(t, nil, h)
	proxy := newTamperProxy(t, srv.Addr(), 0, func(_ int, rec []byte, srv, _ io.Writer) { _, _ = srv.Write(rec) })
	req := &ApplyRequest{Changes: manyChanges(3)}
	for i := range req.Changes {
		req.Changes[i].Peer.ID = marker
	}

	var ekms [][]byte
	for i := range 2 {
		cl := newTestTCP(t, func(o *TCPOptions) { o.ConnsPerPeer = 1 })
		if _, err := cl.Call(trCtx(t, 5*time.Second), proxy.ln.Addr().String(), req); err != nil {
			t.Fatal(err)
		}
		cs := clientSession(t, cl).ConnectionState()
		if cs.Version != tls.VersionTLS13 {
			t.Fatalf("session %d: TLS version %x; want 1.3", i, cs.Version)
		}
		switch cs.CurveID {
		case tls.X25519, tls.X25519MLKEM768, tls.CurveP256, tls.CurveP384, tls.CurveP521:
		default:
			t.Fatalf("session %d: key exchange group %v; want an ECDHE group", i, cs.CurveID)
		}
		if cs.DidResume {
			t.Fatalf("session %d was resumed", i)
		}
		ekm, err := cs.ExportKeyingMaterial("EXPORTER-karuta-test", nil, 32)
		if err != nil {
			t.Fatal(err)
		}
		ekms = append(ekms, ekm)
	}
	mu.Lock()
	if len(got) != 3 || got[0].Peer.ID != marker {
		t.Fatalf("the handler got %v; want the marked changes", got)
	}
	mu.Unlock()
	if bytes.Equal(ekms[0], ekms[1]) {
		t.Fatal("two sessions under the same key share their secrets")
	}

	proxy.mu.Lock()
	wire := bytes.Clone(proxy.sent)
	proxy.mu.Unlock()
	exts := clientHelloExtensions(t, wire)
	const keyShare, preSharedKey, pskModes = 51, 41, 45
	if !exts[keyShare] {
		t.Error("the ClientHello offers no key share: no ECDHE")
	}
	if exts[preSharedKey] || exts[pskModes] {
		t.Error("the ClientHello offers a pre-shared key: the session would depend on it")
	}
	sk, err := newSharedKey(trKeyOld)
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string][]byte{"the request": marker[:], "the key": trKeyOld, "the key id": sk.id[:], "the label": []byte(trLabel)} {
		if bytes.Contains(wire, secret) {
			t.Errorf("%s is on the wire in the clear", name)
		}
	}
}

// keyRewriter is a man in the middle that terminates TLS on both sides
// (shared-key mode does not check certificates, so it can) and passes
// everything through, except that it drops the first key id the client
// offers: the downgrade of finding 3, from [new, old] to old.
type keyRewriter struct {
	ln      net.Listener
	target  string
	rewrite bool
	relayConns
	mu       sync.Mutex
	relayed  int // client hellos passed on
	rewrites int
}

func newKeyRewriter(t *testing.T, target string, rewrite bool) *keyRewriter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := newEphemeral()
	if err != nil {
		t.Fatal(err)
	}
	r := &keyRewriter{ln: ln, target: target, rewrite: rewrite}
	r.wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			sc, err := net.Dial("tcp", target)
			if err != nil {
				nc.Close()
				continue
			}
			cc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
			up := tls.Client(sc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // G402: the attacker checks nothing
			r.add(cc, up)
			r.wg.Go(func() { r.relay(cc, up) })
		}
	})
	r.stopOnCleanup(t, ln)
	return r
}

func (r *keyRewriter) relay(cc, up *tls.Conn) {
	defer cc.Close()
	defer up.Close()
	h, _, err := readClientHello(cc)
	if err != nil {
		return
	}
	var keys []sharedKey
	for _, id := range h.ids {
		keys = append(keys, sharedKey{id: id})
	}
	r.mu.Lock()
	r.relayed++
	if r.rewrite && len(keys) > 1 {
		keys = keys[1:]
		r.rewrites++
	}
	r.mu.Unlock()
	if _, err := up.Write(appendClientHello(nil, h.label, keys, h.name)); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(cc, up)
		cc.Close()
		close(done)
	}()
	_, _ = io.Copy(up, cc)
	up.Close()
	<-done
}

// TestTCPNoDowngrade checks that a relay cannot make two nodes that hold
// [new, old] settle on old: the server's proof covers the offer it saw,
// and the client checks it against the offer it made. It cannot relay an
// unmodified exchange either: proofs are bound to each TLS session.
func TestTCPNoDowngrade(t *testing.T) {
	for _, rewrite := range []bool{true, false} {
		name := "relayed unchanged"
		if rewrite {
			name = "offer rewritten to the old key"
		}
		t.Run(name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			both := func(o *TCPOptions) { o.Keys = [][]byte{trKeyNew, trKeyOld} }
			srv := tcpServe(t, both, h)
			mitm := newKeyRewriter(t, srv.Addr(), rewrite)
			cl := newTestTCP(t, both)
			_, err := cl.Call(trCtx(t, 5*time.Second), mitm.ln.Addr().String(), &ApplyRequest{Changes: manyChanges(1)})
			if !errors.Is(err, ErrUnreachable) || !errors.Is(err, errBadProof) {
				t.Fatalf("through the relay: got %v; want ErrUnreachable for a bad proof", err)
			}
			mitm.mu.Lock()
			relayed, rewrites := mitm.relayed, mitm.rewrites
			mitm.mu.Unlock()
			if relayed == 0 || rewrite && rewrites == 0 {
				t.Fatalf("the relay passed %d hellos, rewrote %d: it did not run", relayed, rewrites)
			}
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times through the relay", n)
			}
			eventually.True(t, 3*time.Second, "the server refused the relayed sessions", func() bool { return tcpSessions(srv) == 0 && rejected(srv, reasonHandshake) >= 1 })
			// Directly, the same nodes agree on the new key.
			if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestServerChoosesClientsFirstKey pins the key choice: the first of the
// client's keys the server holds, so a new key moved first on the callers
// is used as soon as the callees have it.
func TestServerChoosesClientsFirstKey(t *testing.T) {
	for _, tc := range []struct {
		name           string
		client, server [][]byte
		want           byte
	}{
		{"both new first", [][]byte{trKeyNew, trKeyOld}, [][]byte{trKeyNew, trKeyOld}, 0},
		{"server new second", [][]byte{trKeyNew, trKeyOld}, [][]byte{trKeyOld, trKeyNew}, 0},
		{"server lacks new", [][]byte{trKeyNew, trKeyOld}, [][]byte{trKeyOld}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tcpServe(t, func(o *TCPOptions) { o.Keys = tc.server }, &trHandler{})
			key0, _ := newSharedKey(tc.client[0])
			key1, _ := newSharedKey(tc.client[1])
			tc2 := rawTLS(t, srv)
			defer tc2.Close()
			if _, err := tc2.Write(appendClientHello(nil, trLabel, []sharedKey{key0, key1}, "")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, serverHelloSize)
			if _, err := io.ReadFull(tc2, b); err != nil {
				t.Fatal(err)
			}
			sh, err := parseServerHello(b)
			if err != nil {
				t.Fatal(err)
			}
			if sh.status != statusOK || sh.chosen != tc.want {
				t.Fatalf("status %d, chose key %d; want key %d", sh.status, sh.chosen, tc.want)
			}
		})
	}
}
