package cluster

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// stuckBatcher starts node a, whose calls to member b never get an
// answer, and returns a's batcher for b, with both request slots taken by
// fetches that hang until the request gives up (4 × read_timeout).
func stuckBatcher(t *testing.T) (*Cluster, *fetchBatcher) {
	t.Helper()
	tc := newTestCluster(t, 2, func(c *Config) { c.ReadTimeout = 100 * time.Millisecond })
	const addrB = "b" // the in-memory network's address of member b
	tc.wrap = func(name string, tr transport.Transport) transport.Transport {
		if name != "a" {
			return tr
		}
		return brokenTo{Transport: tr, addr: addrB, hang: true}
	}
	tc.start("a")
	a := tc.nodes["a"].c
	b := a.batcherFor(addrB)
	ihs := []bittorrent.InfoHash{ihN(1)}
	for range fetchesInFlight {
		b.start(ihs, time.Time{}, nil)
		synctest.Wait() // sent before the next, so each takes a slot of its own
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.flying != fetchesInFlight || len(b.waiting) != 0 {
		t.Fatalf("%d requests out, %d fetches waiting; want every slot taken by a hanging request", b.flying, len(b.waiting))
	}
	return a, b
}

// TestFetchQueueBounded: fetches queued behind a member that does not
// answer are bounded; past the bound a fetch fails at once, counted.
func TestFetchQueueBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := stuckBatcher(t)
		ihs := []bittorrent.InfoHash{ihN(2)}
		for range maxWaitingFetches {
			b.start(ihs, time.Time{}, nil)
		}
		bf := b.start(ihs, time.Time{}, nil)
		select {
		case <-bf.done:
		default:
			t.Fatal("a fetch past the queue's bound waits; want it failed at once")
		}
		if !errors.Is(bf.err, errFetchQueueFull) {
			t.Errorf("err %v; want %v", bf.err, errFetchQueueFull)
		}
		if got := testutil.ToFloat64(a.m.fetchesDropped.WithLabelValues("queue_full")); got != 1 {
			t.Errorf("fetches_dropped_total{reason=queue_full} = %v; want 1", got)
		}
	})
}

// TestExpiredFetchNotSent: a fetch whose reader stopped waiting before a
// request slot came free is dropped, counted, not sent.
func TestExpiredFetchNotSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := stuckBatcher(t)
		late := b.start([]bittorrent.InfoHash{ihN(3)}, time.Now().Add(10*time.Millisecond), nil)
		kept := b.start([]bittorrent.InfoHash{ihN(4)}, time.Time{}, nil)
		<-late.done
		if !errors.Is(late.err, errFetchExpired) {
			t.Errorf("err %v; want %v", late.err, errFetchExpired)
		}
		if got := testutil.ToFloat64(a.m.fetchesDropped.WithLabelValues("expired")); got != 1 {
			t.Errorf("fetches_dropped_total{reason=expired} = %v; want 1", got)
		}
		<-kept.done
		if errors.Is(kept.err, errFetchExpired) || kept.err == nil {
			t.Errorf("the fetch without a deadline: err %v; want it sent, and failed by the member", kept.err)
		}
	})
}
