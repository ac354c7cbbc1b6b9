package transport_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/node/cluster/transport/transporttest"
)

// memEnv runs the suite on one MemNet.
func memEnv() transporttest.Env {
	n := transport.NewMemNet()
	var next atomic.Int64
	return transporttest.Env{
		Node: func(t *testing.T) transport.Transport {
			tr := n.Transport(fmt.Sprintf("node-%d", next.Add(1)))
			t.Cleanup(func() { tr.Close() })
			return tr
		},
		DeadAddr: func(*testing.T) string { return "nobody" },
	}
}

func TestMemNetConformance(t *testing.T) { transporttest.Run(t, memEnv()) }

func TestMemNetLinks(t *testing.T) {
	n := transport.NewMemNet()
	nodes := map[string]transport.Transport{}
	for _, name := range []string{"a", "b", "c"} {
		nodes[name] = n.Transport(name)
		if err := nodes[name].Serve(&transporttest.Handler{}); err != nil {
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
				_, err := nodes[from].Call(t.Context(), to, &transport.ApplyRequest{})
				switch link := from + ">" + to; {
				case up[link] && err != nil:
					t.Errorf("%s: %v", link, err)
				case !up[link] && !errors.Is(err, transport.ErrUnreachable):
					t.Errorf("%s: got %v; want transport.ErrUnreachable", link, err)
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
	n := transport.NewMemNet()
	cl := n.Transport("client")
	t.Cleanup(func() { cl.Close() })
	first := n.Transport("srv")
	if err := first.Serve(&transporttest.Handler{}); err != nil {
		t.Fatal(err)
	}
	if err := first.Serve(&transporttest.Handler{}); err == nil {
		t.Error("a second Serve succeeded")
	}
	if err := n.Transport("srv").Serve(&transporttest.Handler{}); err == nil {
		t.Error("two transports serve one address")
	}
	if _, err := cl.Call(t.Context(), "srv", &transport.ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
	first.Close()
	if _, err := cl.Call(t.Context(), "srv", &transport.ApplyRequest{}); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("closed node: got %v; want transport.ErrUnreachable", err)
	}
	if err := first.Serve(&transporttest.Handler{}); err == nil {
		t.Error("a closed transport served again")
	}
	restarted := n.Transport("srv")
	t.Cleanup(func() { restarted.Close() })
	if err := restarted.Serve(&transporttest.Handler{}); err != nil {
		t.Fatalf("restarted node: %v", err)
	}
	if _, err := cl.Call(t.Context(), "srv", &transport.ApplyRequest{}); err != nil {
		t.Fatalf("restarted node: %v", err)
	}
}

// TestMemNetCutLosesReply checks that a cut during a call loses the
// reply, after the handler ran: the case that makes retries unsafe.
func TestMemNetCutLosesReply(t *testing.T) {
	n := transport.NewMemNet()
	entered, release := make(chan struct{}), make(chan struct{})
	h := &transporttest.Handler{Fn: func(context.Context, transport.Request) (transport.Reply, error) {
		close(entered)
		<-release
		return &transport.Ack{}, nil
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
	_, err := cl.Call(t.Context(), "srv", &transport.ApplyRequest{})
	if !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("got %v; want transport.ErrUnreachable", err)
	}
	if h.Calls.Load() != 1 {
		t.Fatalf("handler ran %d times; want 1", h.Calls.Load())
	}
}

func TestMemNetDelay(t *testing.T) {
	n := transport.NewMemNet()
	srv, cl := n.Transport("srv"), n.Transport("client")
	t.Cleanup(func() { srv.Close(); cl.Close() })
	if err := srv.Serve(&transporttest.Handler{}); err != nil {
		t.Fatal(err)
	}
	n.SetDelay(20 * time.Millisecond)
	start := time.Now()
	if _, err := cl.Call(t.Context(), "srv", &transport.ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("round trip took %s; want at least two delays", d)
	}
	_, err := cl.Call(transporttest.Ctx(t, 10*time.Millisecond), "srv", &transport.ApplyRequest{})
	if !errors.Is(err, transport.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want transport.ErrUnreachable and DeadlineExceeded", err)
	}
	n.SetDelay(0)
	if _, err := cl.Call(transporttest.Ctx(t, 10*time.Millisecond), "srv", &transport.ApplyRequest{}); err != nil {
		t.Fatal(err)
	}
}
