package cluster

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
)

// This file holds the conformance suite every Transport passes
// (testTransport; the TCP tests run it too) and MemNet's own tests.

// trHandler counts the requests it handles and answers them with fn, or
// with trAnswer when fn is nil.
type trHandler struct {
	calls atomic.Int64
	fn    func(ctx context.Context, req Request) (Reply, error)
}

func (h *trHandler) Handle(ctx context.Context, req Request) (Reply, error) {
	h.calls.Add(1)
	if h.fn != nil {
		return h.fn(ctx, req)
	}
	return trAnswer(req)
}

// trAnswer is a handler whose replies depend on the request, so a reply
// delivered to the wrong call is caught: a fetch is answered with
// MaxPeers seeders, or an error when MaxPeers is negative.
func trAnswer(req Request) (Reply, error) {
	switch r := req.(type) {
	case *FetchRequest:
		if r.MaxPeers < 0 {
			return nil, fmt.Errorf("no swarm %s", r.InfoHash)
		}
		return &FetchReply{
			Counts: bittorrent.Counts{Seeders: uint32(r.MaxPeers), Leechers: 1},
			Peers:  []SwarmPeer{{Peer: bittorrent.Peer{ID: bittorrent.PeerID(r.InfoHash), Addr: netip.MustParseAddrPort("[2001:db8::1]:6881")}, Seeder: true}},
		}, nil
	case *ApplyRequest, *MergeRequest:
		return &Ack{}, nil
	}
	return nil, fmt.Errorf("unexpected request %T", req)
}

// trEnv makes transports on one network for the conformance suite.
type trEnv struct {
	// node returns a transport for a new node, closed when t ends.
	node func(t *testing.T) Transport
	// deadAddr returns an address no node serves.
	deadAddr func(t *testing.T) string
}

func trServe(t *testing.T, env trEnv, h Handler) Transport {
	t.Helper()
	tr := env.node(t)
	if err := tr.Serve(h); err != nil {
		t.Fatal(err)
	}
	return tr
}

// trNoLeaks fails t if, once its cleanups (registered later, so run
// earlier) have closed everything, goroutines outlive it.
func trNoLeaks(t *testing.T) {
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

// trEventually polls cond until it holds or within passes.
func trEventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still false after %s", what, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func trCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// testTransport is the behaviour every Transport must have.
func testTransport(t *testing.T, env trEnv) {
	t.Run("round trip", func(t *testing.T) {
		trNoLeaks(t)
		var (
			mu  sync.Mutex // orders the handler's write before the test's read under -race
			got Request
		)
		h := &trHandler{fn: func(_ context.Context, req Request) (Reply, error) {
			mu.Lock()
			got = req
			mu.Unlock()
			return trAnswer(req)
		}}
		srv := trServe(t, env, h)
		cl := env.node(t)
		for _, tc := range []struct {
			name string
			req  Request
			want Reply
		}{
			{"apply", &ApplyRequest{Changes: manyChanges(5)}, &Ack{}},
			{"apply empty", &ApplyRequest{}, &Ack{}},
			{"fetch", &FetchRequest{InfoHash: testInfoHash(3), MaxPeers: 50}, &FetchReply{
				Counts: bittorrent.Counts{Seeders: 50, Leechers: 1},
				Peers:  []SwarmPeer{{Peer: bittorrent.Peer{ID: bittorrent.PeerID(testInfoHash(3)), Addr: netip.MustParseAddrPort("[2001:db8::1]:6881")}, Seeder: true}},
			}},
			{"merge", &MergeRequest{Swarms: []Swarm{{InfoHash: testInfoHash(4), Snatches: 9, Peers: manySwarmPeers(3)}, {InfoHash: testInfoHash(5)}}}, &Ack{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rep, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), tc.req)
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
		trNoLeaks(t)
		var (
			mu  sync.Mutex
			got *ApplyRequest
		)
		h := &trHandler{fn: func(_ context.Context, req Request) (Reply, error) {
			r := req.(*ApplyRequest)
			r.Changes[1].Op = bittorrent.OpRemove // a handler may scribble
			mu.Lock()
			got = r
			mu.Unlock()
			return &Ack{}, nil
		}}
		srv := trServe(t, env, h)
		cl := env.node(t)
		req := &ApplyRequest{Changes: manyChanges(2)}
		req.Changes[1].Op = bittorrent.OpPut
		if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), req); err != nil {
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

	t.Run("handler error is a RemoteError", func(t *testing.T) {
		trNoLeaks(t)
		srv := trServe(t, env, &trHandler{})
		cl := env.node(t)
		ih := testInfoHash(7)
		_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &FetchRequest{InfoHash: ih, MaxPeers: -1})
		re, ok := errors.AsType[RemoteError](err)
		if !ok || string(re) != "no swarm "+ih.String() {
			t.Fatalf("got %v; want RemoteError %q", err, "no swarm "+ih.String())
		}
		if errors.Is(err, ErrUnreachable) {
			t.Fatalf("%v: a node that answered is not unreachable", err)
		}
	})

	t.Run("unencodable request", func(t *testing.T) {
		trNoLeaks(t)
		h := &trHandler{}
		srv := trServe(t, env, h)
		cl := env.node(t)
		for _, req := range []Request{nil, (*FetchRequest)(nil), &ApplyRequest{Changes: []bittorrent.Change{{Op: 9}}}} {
			_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), req)
			if err == nil || errors.Is(err, ErrUnreachable) {
				t.Errorf("Call(%#v) = %v; want an encoding error", req, err)
			}
		}
		if n := h.calls.Load(); n != 0 {
			t.Errorf("handler called %d times", n)
		}
	})

	t.Run("nobody serves", func(t *testing.T) {
		trNoLeaks(t)
		cl := env.node(t)
		addr := env.deadAddr(t)
		_, err := cl.Call(trCtx(t, 5*time.Second), addr, &FetchRequest{})
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("got %v; want ErrUnreachable", err)
		}
	})

	t.Run("closed server", func(t *testing.T) {
		trNoLeaks(t)
		srv := trServe(t, env, &trHandler{})
		cl := env.node(t)
		if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
			t.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{})
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("got %v; want ErrUnreachable", err)
		}
	})

	t.Run("closed client", func(t *testing.T) {
		trNoLeaks(t)
		srv := trServe(t, env, &trHandler{})
		cl := env.node(t)
		if err := cl.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{})
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("got %v; want ErrUnreachable", err)
		}
	})

	t.Run("deadline while the handler blocks", func(t *testing.T) {
		trNoLeaks(t)
		handlerDone, release := make(chan error, 1), make(chan struct{})
		srv := trServe(t, env, &trHandler{fn: func(ctx context.Context, _ Request) (Reply, error) {
			<-ctx.Done() // the caller's deadline reaches the handler
			handlerDone <- ctx.Err()
			<-release // answer only once the caller has given up
			return &Ack{}, nil
		}})
		defer close(release)
		cl := env.node(t)
		start := time.Now()
		_, err := cl.Call(trCtx(t, 50*time.Millisecond), srv.Addr(), &ApplyRequest{})
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v; want ErrUnreachable and DeadlineExceeded", err)
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
		trNoLeaks(t)
		entered := make(chan struct{})
		srv := trServe(t, env, &trHandler{fn: func(ctx context.Context, _ Request) (Reply, error) {
			close(entered)
			<-ctx.Done()
			return nil, ctx.Err()
		}})
		cl := env.node(t)
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-entered
			cancel()
		}()
		_, err := cl.Call(ctx, srv.Addr(), &ApplyRequest{})
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v; want ErrUnreachable and Canceled", err)
		}
	})

	t.Run("concurrent calls", func(t *testing.T) {
		trNoLeaks(t)
		srv := trServe(t, env, &trHandler{})
		cl := env.node(t)
		const workers, calls = 50, 200
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range calls {
					n := w*calls + i
					rep, err := cl.Call(trCtx(t, 10*time.Second), srv.Addr(), &FetchRequest{InfoHash: testInfoHash(byte(n)), MaxPeers: n})
					if err != nil {
						errs <- err
						return
					}
					if fr, ok := rep.(*FetchReply); !ok || fr.Counts.Seeders != uint32(n) || fr.Peers[0].ID != bittorrent.PeerID(testInfoHash(byte(n))) {
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
		trNoLeaks(t)
		const inFlight = 8
		var entered sync.WaitGroup
		entered.Add(inFlight)
		srv := trServe(t, env, &trHandler{fn: func(ctx context.Context, _ Request) (Reply, error) {
			entered.Done()
			<-ctx.Done() // released by Close
			return &Ack{}, nil
		}})
		cl := env.node(t)
		errs := make(chan error, inFlight)
		for range inFlight {
			go func() {
				_, err := cl.Call(trCtx(t, 10*time.Second), srv.Addr(), &ApplyRequest{})
				errs <- err
			}()
		}
		entered.Wait()
		closed := make(chan error)
		go func() { closed <- srv.Close() }()
		for range inFlight {
			select {
			case err := <-errs:
				if !errors.Is(err, ErrUnreachable) {
					t.Errorf("got %v; want ErrUnreachable", err)
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

// memEnv runs the suite on one MemNet.
func memEnv() trEnv {
	n := NewMemNet()
	var next atomic.Int64
	return trEnv{
		node: func(t *testing.T) Transport {
			tr := n.Transport(fmt.Sprintf("node-%d", next.Add(1)))
			t.Cleanup(func() { tr.Close() })
			return tr
		},
		deadAddr: func(*testing.T) string { return "nobody" },
	}
}

func TestMemNetTransport(t *testing.T) { testTransport(t, memEnv()) }

func TestMemNetLinks(t *testing.T) {
	n := NewMemNet()
	nodes := map[string]Transport{}
	for _, name := range []string{"a", "b", "c"} {
		nodes[name] = n.Transport(name)
		if err := nodes[name].Serve(&trHandler{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nodes[name].Close() })
	}
	// reach lists the links that work, as "from>to"; all others must fail.
	check := func(t *testing.T, reach ...string) {
		t.Helper()
		up := map[string]bool{}
		for _, r := range reach {
			up[r] = true
		}
		for _, from := range []string{"a", "b", "c"} {
			for _, to := range []string{"a", "b", "c"} {
				_, err := nodes[from].Call(t.Context(), to, &ApplyRequest{})
				switch link := from + ">" + to; {
				case up[link] && err != nil:
					t.Errorf("%s: %v", link, err)
				case !up[link] && !errors.Is(err, ErrUnreachable):
					t.Errorf("%s: got %v; want ErrUnreachable", link, err)
				}
			}
		}
	}
	all := []string{"a>a", "a>b", "a>c", "b>a", "b>b", "b>c", "c>a", "c>b", "c>c"}
	for _, step := range []struct {
		name  string
		do    func()
		reach []string
	}{
		{"all up", func() {}, all},
		{"cut a-b", func() { n.Cut("a", "b") }, []string{"a>a", "a>c", "b>b", "b>c", "c>a", "c>b", "c>c"}},
		{"heal", n.Heal, all},
		{"isolate c", func() { n.Isolate("c") }, []string{"a>a", "a>b", "b>a", "b>b", "c>c"}},
		{"also cut a-b", func() { n.Cut("b", "a") }, []string{"a>a", "b>b", "c>c"}},
		{"heal everything", n.Heal, all},
	} {
		t.Run(step.name, func(t *testing.T) {
			step.do()
			check(t, step.reach...)
		})
	}
}

func TestMemNetServeAndClose(t *testing.T) {
	n := NewMemNet()
	cl := n.Transport("client")
	t.Cleanup(func() { cl.Close() })
	first := n.Transport("srv")
	if err := first.Serve(&trHandler{}); err != nil {
		t.Fatal(err)
	}
	if err := first.Serve(&trHandler{}); err == nil {
		t.Error("a second Serve succeeded")
	}
	if err := n.Transport("srv").Serve(&trHandler{}); err == nil {
		t.Error("two transports serve one address")
	}
	if _, err := cl.Call(t.Context(), "srv", &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
	first.Close()
	if _, err := cl.Call(t.Context(), "srv", &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("closed node: got %v; want ErrUnreachable", err)
	}
	if err := first.Serve(&trHandler{}); err == nil {
		t.Error("a closed transport served again")
	}
	restarted := n.Transport("srv")
	t.Cleanup(func() { restarted.Close() })
	if err := restarted.Serve(&trHandler{}); err != nil {
		t.Fatalf("restarted node: %v", err)
	}
	if _, err := cl.Call(t.Context(), "srv", &ApplyRequest{}); err != nil {
		t.Fatalf("restarted node: %v", err)
	}
}

// TestMemNetCutLosesReply checks that a cut during a call loses the
// reply, after the handler ran: the case that makes retries unsafe.
func TestMemNetCutLosesReply(t *testing.T) {
	n := NewMemNet()
	entered, release := make(chan struct{}), make(chan struct{})
	h := &trHandler{fn: func(context.Context, Request) (Reply, error) {
		close(entered)
		<-release
		return &Ack{}, nil
	}}
	srv, cl := n.Transport("srv"), n.Transport("client")
	t.Cleanup(func() { srv.Close(); cl.Close() })
	if err := srv.Serve(h); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-entered
		n.Cut("client", "srv")
		close(release)
	}()
	_, err := cl.Call(t.Context(), "srv", &ApplyRequest{})
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("got %v; want ErrUnreachable", err)
	}
	if h.calls.Load() != 1 {
		t.Fatalf("handler ran %d times; want 1", h.calls.Load())
	}
}

func TestMemNetDelay(t *testing.T) {
	n := NewMemNet()
	srv, cl := n.Transport("srv"), n.Transport("client")
	t.Cleanup(func() { srv.Close(); cl.Close() })
	if err := srv.Serve(&trHandler{}); err != nil {
		t.Fatal(err)
	}
	n.SetDelay(20 * time.Millisecond)
	start := time.Now()
	if _, err := cl.Call(t.Context(), "srv", &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("round trip took %s; want at least two delays", d)
	}
	_, err := cl.Call(trCtx(t, 10*time.Millisecond), "srv", &ApplyRequest{})
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want ErrUnreachable and DeadlineExceeded", err)
	}
	n.SetDelay(0)
	if _, err := cl.Call(trCtx(t, 10*time.Millisecond), "srv", &ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
}
