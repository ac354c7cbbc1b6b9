package transport

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// Helpers for the TCP tests, which reach into the transport's internals
// and so cannot use transporttest from inside the package.

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

// trNoLeaks fails t if, once its cleanups (registered later, so run
// earlier) have closed everything, goroutines outlive it.
func trNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		eventually.NoError(t, 3*time.Second, "goroutines end with the test", func() error {
			if runtime.NumGoroutine() > before {
				return leaked{before}
			}
			return nil
		})
	})
}

// leaked reports goroutines left over, with their stacks taken when the
// failure is printed rather than on every poll.
type leaked struct{ before int }

func (l leaked) Error() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return fmt.Sprintf("%d goroutines left, %d before the test:\n%s", runtime.NumGoroutine(), l.before, buf)
}

func trCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
