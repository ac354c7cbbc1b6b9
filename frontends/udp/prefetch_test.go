package udp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// prefetchTracker is a fakeTracker that records what it is asked to
// prefetch.
type prefetchTracker struct {
	fakeTracker
	prefetched [][]bittorrent.InfoHash
}

func (p *prefetchTracker) Prefetch(ihs []bittorrent.InfoHash) {
	p.prefetched = append(p.prefetched, slices.Clone(ihs))
}

// TestPrefetchBatch checks that a batch's announces and scrapes with valid
// connection IDs are prefetched together before any is answered, that
// forged, malformed and connect datagrams are left out, and that every
// datagram is then answered as without prefetching.
func TestPrefetchBatch(t *testing.T) {
	tr := &prefetchTracker{fakeTracker: fakeTracker{peers: testPeers(5)}}
	h := newTestHandler(t, tr)
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	id := mintFor(t, from.Addr(), testNow)

	a1, a2, forged := testAnnounce(), testAnnounce(), testAnnounce()
	a1.infoHash, a2.infoHash, forged.infoHash = hashN(1), hashN(2), hashN(3)
	packets := [][]byte{
		a1.packet(id, 1),
		connectPacket(2),
		forged.packet(id^1, 3),                  // wrong connection ID
		scrapePacket(id, 4, hashN(4), hashN(5)), // two hashes
		a2.packet(id, 5)[:announceLen-1],        // truncated announce
		a2.packet(id, 6),
	}
	batch := make([]slot, len(packets))
	for i, p := range packets {
		batch[i] = newSlot()
		batch[i].n = copy(batch[i].buf, p)
		batch[i].from = from
	}
	h.prefetch(batch, testNow)

	want := []bittorrent.InfoHash{hashN(1), hashN(4), hashN(5), hashN(2)}
	if len(tr.prefetched) != 1 || !slices.Equal(tr.prefetched[0], want) {
		t.Fatalf("prefetched %x, want one call with %x", tr.prefetched, want)
	}
	for i := range batch {
		h.handle(&batch[i], testNow)
	}
	wantResults := []string{frontends.ResultOK, frontends.ResultOK, frontends.ResultClientError,
		frontends.ResultOK, frontends.ResultClientError, frontends.ResultOK}
	for i, s := range batch {
		if s.result != wantResults[i] {
			t.Errorf("datagram %d: result %q, want %q (reply %q)", i, s.result, wantResults[i], s.reply)
		}
		if s.verified {
			t.Errorf("datagram %d: verified mark left set after handle", i)
		}
	}

	// A lone datagram has nothing to overlap with and is not prefetched.
	tr.prefetched = nil
	h.prefetch(batch[:1], testNow)
	if len(tr.prefetched) != 0 {
		t.Errorf("a batch of one was prefetched: %x", tr.prefetched)
	}
}

// TestPrefetchAllocs checks that prefetching keeps the announce path free
// of allocations.
func TestPrefetchAllocs(t *testing.T) {
	h := newTestHandler(t, &fakeTracker{peers: testPeers(5)})
	h.pf = nopPrefetcher{}
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	pkt := testAnnounce().packet(mintFor(t, from.Addr(), testNow), 1)
	batch := make([]slot, 8)
	for i := range batch {
		batch[i] = newSlot()
		batch[i].n = copy(batch[i].buf, pkt)
		batch[i].from = from
	}
	if n := testing.AllocsPerRun(100, func() {
		h.prefetch(batch, testNow)
		for i := range batch {
			h.handle(&batch[i], testNow)
		}
	}); n != 0 {
		t.Errorf("%v allocations per batch, want 0", n)
	}
}

type nopPrefetcher struct{}

func (nopPrefetcher) Prefetch([]bittorrent.InfoHash) {}
