// Package transporttest is the conformance suite every cluster transport
// runs: round trips of each message, errors, cancellation, unreachable
// nodes and closing, checked the same way for the in-memory network and TCP.
package transporttest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// This file holds the conformance suite every Transport passes
// (testTransport; the TCP tests run it too) and MemNet's own tests.

// Handler counts the requests it handles and answers them with fn, or
// with Answer when fn is nil.
type Handler struct {
	Calls atomic.Int64
	Fn    func(ctx context.Context, req transport.Request) (transport.Reply, error)
}

// Handle counts req and answers it with Fn, or with Answer when Fn is nil.
func (h *Handler) Handle(ctx context.Context, req transport.Request) (transport.Reply, error) {
	h.Calls.Add(1)
	if h.Fn != nil {
		return h.Fn(ctx, req)
	}
	return Answer(req)
}

// Answer is a handler whose replies depend on the request, so a reply
// delivered to the wrong call is caught: a fetch is answered with
// MaxPeers seeders, or an error when MaxPeers is negative (a fetch of
// many swarms the same, swarm by swarm); a scrape page with Cursor+1 as
// the next cursor and one file naming the cursor.
func Answer(req transport.Request) (transport.Reply, error) {
	switch r := req.(type) {
	case *transport.FetchRequest:
		if r.MaxPeers < 0 {
			return nil, fmt.Errorf("no swarm %s", r.InfoHash)
		}
		return fetchAnswer(r.InfoHash, r.MaxPeers), nil
	case *transport.FetchManyRequest:
		if r.MaxPeers < 0 {
			return nil, fmt.Errorf("no swarms %v", r.InfoHashes)
		}
		reply := &transport.FetchManyReply{Swarms: make([]transport.FetchReply, len(r.InfoHashes))}
		for i, ih := range r.InfoHashes {
			reply.Swarms[i] = *fetchAnswer(ih, r.MaxPeers)
		}
		return reply, nil
	case *transport.ApplyRequest, *transport.MergeRequest, *transport.SignalRequest:
		return &transport.Ack{}, nil
	case *transport.ScrapeRequest:
		return &transport.ScrapeReply{Next: r.Cursor + 1, Done: r.Max == 0, Files: []bittorrent.Scrape{
			{InfoHash: bittorrent.InfoHash{byte(r.Cursor)}, Counts: bittorrent.Counts{Seeders: uint32(r.Max)}},
		}}, nil
	}
	return nil, fmt.Errorf("unexpected request %T", req)
}

// fetchAnswer is Answer's reply for swarm ih: maxPeers seeders counted and
// one peer whose ID is the infohash.
func fetchAnswer(ih bittorrent.InfoHash, maxPeers int) *transport.FetchReply {
	return &transport.FetchReply{
		Counts: bittorrent.Counts{Seeders: uint32(maxPeers), Leechers: 1},
		Peers:  []transport.SwarmPeer{{Peer: bittorrent.Peer{ID: bittorrent.PeerID(ih), Addr: netip.MustParseAddrPort("[2001:db8::1]:6881")}, Seeder: true}},
	}
}

// Env makes transports on one network for the conformance suite.
type Env struct {
	// node returns a transport for a new node, closed when t ends.
	Node func(t *testing.T) transport.Transport
	// deadAddr returns an address no node serves.
	DeadAddr func(t *testing.T) string
}

// Serve returns a new transport of env serving h; t fails if it cannot.
func Serve(t *testing.T, env Env, h transport.Handler) transport.Transport {
	t.Helper()
	tr := env.Node(t)
	if err := tr.Serve(h); err != nil {
		t.Fatal(err)
	}
	return tr
}

// NoLeaks fails t if, once its cleanups (registered later, so run
// earlier) have closed everything, goroutines outlive it.
func NoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines left, %d before the test:\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// Eventually polls cond until it holds or within passes.
func Eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still false after %s", what, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Ctx returns a context that ends after d or when t does.
func Ctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// Run checks the behaviour every Transport must have, on transports
// made by env.
func Run(t *testing.T, env Env) {
	t.Run("round trip", func(t *testing.T) {
		NoLeaks(t)
		var (
			mu  sync.Mutex // orders the handler's write before the test's read under -race
			got transport.Request
		)
		h := &Handler{Fn: func(_ context.Context, req transport.Request) (transport.Reply, error) {
			mu.Lock()
			got = req
			mu.Unlock()
			return Answer(req)
		}}
		srv := Serve(t, env, h)
		cl := env.Node(t)
		for _, tc := range []struct {
			name string
			req  transport.Request
			want transport.Reply
		}{
			{"apply", &transport.ApplyRequest{Changes: changes(5)}, &transport.Ack{}},
			{"apply empty", &transport.ApplyRequest{}, &transport.Ack{}},
			{"fetch", &transport.FetchRequest{InfoHash: infoHash(3), MaxPeers: 50}, &transport.FetchReply{
				Counts: bittorrent.Counts{Seeders: 50, Leechers: 1},
				Peers:  []transport.SwarmPeer{{Peer: bittorrent.Peer{ID: bittorrent.PeerID(infoHash(3)), Addr: netip.MustParseAddrPort("[2001:db8::1]:6881")}, Seeder: true}},
			}},
			{"fetch many", &transport.FetchManyRequest{InfoHashes: []bittorrent.InfoHash{infoHash(3), infoHash(6)}, MaxPeers: 50}, &transport.FetchManyReply{Swarms: []transport.FetchReply{
				*fetchAnswer(infoHash(3), 50), *fetchAnswer(infoHash(6), 50),
			}}},
			{"merge", &transport.MergeRequest{Swarms: []transport.Swarm{{InfoHash: infoHash(4), Snatches: 9, Peers: swarmPeers(3)}, {InfoHash: infoHash(5)}}}, &transport.Ack{}},
			{"signal", &transport.SignalRequest{Signals: []bittorrent.Signal{{
				Kind: bittorrent.SignalOffer, InfoHash: infoHash(8), OfferID: "o1", SDP: []byte(`{"type":"offer"}`),
				From: bittorrent.WebRTCAddr(1, 2), FromID: bittorrent.PeerID{1}, To: bittorrent.WebRTCAddr(3, 4), ToID: bittorrent.PeerID{2},
			}}}, &transport.Ack{}},
			{"scrape", &transport.ScrapeRequest{Cursor: 7, Max: 100}, &transport.ScrapeReply{Next: 8, Files: []bittorrent.Scrape{
				{InfoHash: bittorrent.InfoHash{7}, Counts: bittorrent.Counts{Seeders: 100}},
			}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rep, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), tc.req)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(rep, tc.want) {
					t.Errorf("reply %+v, want %+v", rep, tc.want)
				}
				mu.Lock()
				defer mu.Unlock()
				if !reflect.DeepEqual(got, tc.req) {
					t.Errorf("handler got %+v, want %+v", got, tc.req)
				}
			})
		}
	})

	t.Run("values are not shared", func(t *testing.T) {
		NoLeaks(t)
		var (
			mu  sync.Mutex
			got *transport.ApplyRequest
		)
		h := &Handler{Fn: func(_ context.Context, req transport.Request) (transport.Reply, error) {
			r := req.(*transport.ApplyRequest)
			r.Changes[1].Op = bittorrent.OpRemove // a handler may scribble
			mu.Lock()
			got = r
			mu.Unlock()
			return &transport.Ack{}, nil
		}}
		srv := Serve(t, env, h)
		cl := env.Node(t)
		req := &transport.ApplyRequest{Changes: changes(2)}
		req.Changes[1].Op = bittorrent.OpPut
		if _, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), req); err != nil {
			t.Fatal(err)
		}
		if req.Changes[1].Op != bittorrent.OpPut {
			t.Error("the handler's change reached the caller's request")
		}
		req.Changes[0].Seeder = !req.Changes[0].Seeder // the caller reuses its buffer
		mu.Lock()
		defer mu.Unlock()
		if got.Changes[0].Seeder == req.Changes[0].Seeder {
			t.Error("the caller's change reached the handler's request")
		}
	})

	t.Run("handler error is a transport.RemoteError", func(t *testing.T) {
		NoLeaks(t)
		srv := Serve(t, env, &Handler{})
		cl := env.Node(t)
		ih := infoHash(7)
		_, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), &transport.FetchRequest{InfoHash: ih, MaxPeers: -1})
		re, ok := errors.AsType[transport.RemoteError](err)
		if !ok || string(re) != "no swarm "+ih.String() {
			t.Fatalf("got %v; want transport.RemoteError %q", err, "no swarm "+ih.String())
		}
		if errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("%v: a node that answered is not unreachable", err)
		}
	})

	t.Run("unencodable request", func(t *testing.T) {
		NoLeaks(t)
		h := &Handler{}
		srv := Serve(t, env, h)
		cl := env.Node(t)
		for _, req := range []transport.Request{nil, (*transport.FetchRequest)(nil), &transport.ApplyRequest{Changes: []bittorrent.Change{{Op: 9}}}} {
			_, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), req)
			if err == nil || errors.Is(err, transport.ErrUnreachable) {
				t.Errorf("Call(%#v) = %v; want an encoding error", req, err)
			}
		}
		if n := h.Calls.Load(); n != 0 {
			t.Errorf("handler called %d times", n)
		}
	})

	t.Run("nobody serves", func(t *testing.T) {
		NoLeaks(t)
		cl := env.Node(t)
		addr := env.DeadAddr(t)
		_, err := cl.Call(Ctx(t, 5*time.Second), addr, &transport.FetchRequest{})
		if !errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("got %v; want transport.ErrUnreachable", err)
		}
	})

	t.Run("closed server", func(t *testing.T) {
		NoLeaks(t)
		srv := Serve(t, env, &Handler{})
		cl := env.Node(t)
		if _, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), &transport.ApplyRequest{}); err != nil {
			t.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), &transport.ApplyRequest{})
		if !errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("got %v; want transport.ErrUnreachable", err)
		}
	})

	t.Run("closed client", func(t *testing.T) {
		NoLeaks(t)
		srv := Serve(t, env, &Handler{})
		cl := env.Node(t)
		if err := cl.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Call(Ctx(t, 5*time.Second), srv.Addr(), &transport.ApplyRequest{})
		if !errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("got %v; want transport.ErrUnreachable", err)
		}
	})

	t.Run("deadline while the handler blocks", func(t *testing.T) {
		NoLeaks(t)
		handlerDone, release := make(chan error, 1), make(chan struct{})
		srv := Serve(t, env, &Handler{Fn: func(ctx context.Context, req transport.Request) (transport.Reply, error) {
			if _, ok := req.(*transport.FetchRequest); ok {
				return Answer(req) // the warm-up
			}
			<-ctx.Done() // the caller's deadline reaches the handler
			handlerDone <- ctx.Err()
			<-release // answer only once the caller has given up
			return &transport.Ack{}, nil
		}})
		defer close(release)
		cl := env.Node(t)
		// Connect first, so the short deadline below is spent on the
		// call, not on a handshake (a TLS one under -race on a loaded
		// machine can take longer than the deadline).
		if _, err := cl.Call(Ctx(t, 10*time.Second), srv.Addr(), &transport.FetchRequest{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := cl.Call(Ctx(t, 50*time.Millisecond), srv.Addr(), &transport.ApplyRequest{})
		if !errors.Is(err, transport.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v; want transport.ErrUnreachable and DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Call returned after %s", d)
		}
		select {
		case err := <-handlerDone:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("handler context ended with %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("the handler's context outlived the caller's deadline")
		}
	})

	t.Run("cancel", func(t *testing.T) {
		NoLeaks(t)
		entered := make(chan struct{})
		srv := Serve(t, env, &Handler{Fn: func(ctx context.Context, _ transport.Request) (transport.Reply, error) {
			close(entered)
			<-ctx.Done()
			return nil, ctx.Err()
		}})
		cl := env.Node(t)
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-entered
			cancel()
		}()
		_, err := cl.Call(ctx, srv.Addr(), &transport.ApplyRequest{})
		if !errors.Is(err, transport.ErrUnreachable) || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v; want transport.ErrUnreachable and Canceled", err)
		}
	})

	t.Run("concurrent calls", func(t *testing.T) {
		NoLeaks(t)
		srv := Serve(t, env, &Handler{})
		cl := env.Node(t)
		const workers, calls = 50, 200
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range calls {
					n := w*calls + i
					rep, err := cl.Call(Ctx(t, 10*time.Second), srv.Addr(), &transport.FetchRequest{InfoHash: infoHash(byte(n)), MaxPeers: n})
					if err != nil {
						errs <- err
						return
					}
					if fr, ok := rep.(*transport.FetchReply); !ok || fr.Counts.Seeders != uint32(n) || fr.Peers[0].ID != bittorrent.PeerID(infoHash(byte(n))) {
						errs <- fmt.Errorf("call %d got %+v", n, rep)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("close with calls in flight", func(t *testing.T) {
		NoLeaks(t)
		const inFlight = 8
		var entered sync.WaitGroup
		entered.Add(inFlight)
		srv := Serve(t, env, &Handler{Fn: func(ctx context.Context, _ transport.Request) (transport.Reply, error) {
			entered.Done()
			<-ctx.Done() // released by Close
			return &transport.Ack{}, nil
		}})
		cl := env.Node(t)
		errs := make(chan error, inFlight)
		for range inFlight {
			go func() {
				_, err := cl.Call(Ctx(t, 10*time.Second), srv.Addr(), &transport.ApplyRequest{})
				errs <- err
			}()
		}
		entered.Wait()
		closed := make(chan error)
		go func() { closed <- srv.Close() }()
		for range inFlight {
			select {
			case err := <-errs:
				if !errors.Is(err, transport.ErrUnreachable) {
					t.Errorf("got %v; want transport.ErrUnreachable", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a call outlived the server's Close")
			}
		}
		select {
		case err := <-closed:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return")
		}
	})
}

// infoHash is a distinct infohash for each b.
func infoHash(b byte) bittorrent.InfoHash {
	var ih bittorrent.InfoHash
	for i := range ih {
		ih[i] = b + byte(i)
	}
	return ih
}

// changes returns n changes cycling through every operation and both
// address families.
func changes(n int) []bittorrent.Change {
	ops := []bittorrent.ChangeOp{bittorrent.OpPut, bittorrent.OpRemove, bittorrent.OpComplete}
	cs := make([]bittorrent.Change, n)
	for i := range cs {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(1000+i))
		if i%2 == 1 {
			addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}), uint16(1000+i))
		}
		var id bittorrent.PeerID
		id[0], id[19] = byte(i), byte(i>>8)
		cs[i] = bittorrent.Change{InfoHash: infoHash(byte(i)), Peer: bittorrent.Peer{ID: id, Addr: addr}, Op: ops[i%3], Seeder: i%4 == 0}
	}
	return cs
}

func swarmPeers(n int) []transport.SwarmPeer {
	ps := make([]transport.SwarmPeer, n)
	for i, c := range changes(n) {
		ps[i] = transport.SwarmPeer{Peer: c.Peer, Seeder: c.Seeder}
	}
	return ps
}
