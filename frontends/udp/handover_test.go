package udp

import (
	"net/netip"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// batchTracker is a fakeTracker that takes answered announces a batch at a
// time and records each batch's ports.
type batchTracker struct {
	fakeTracker
	batches [][]uint16
	singles int
}

func (b *batchTracker) AfterAnnounce(*bittorrent.AnnounceRequest) { b.singles++ }

func (b *batchTracker) AfterAnnounceBatch(reqs []*bittorrent.AnnounceRequest) {
	var ports []uint16
	for _, r := range reqs {
		ports = append(ports, r.Addr.Port())
	}
	b.batches = append(b.batches, ports)
}

// TestHandOver checks that a tracker taking batches gets a batch's
// answered announces, and only those, in one call once the replies are
// out, and that handing over allocates nothing.
func TestHandOver(t *testing.T) {
	tr := &batchTracker{}
	h := newTestHandler(t, tr)
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	id := mintFor(t, from.Addr(), testNow)
	withPort := func(port uint16) []byte {
		a := testAnnounce()
		a.port = port
		return a.packet(id, 1)
	}
	packets := [][]byte{
		withPort(1),
		connectPacket(2),
		testAnnounce().packet(id^1, 3), // wrong connection ID: not answered
		withPort(2),
		scrapePacket(id, 4, hashN(4)),
		withPort(3), // its reply is not sent
	}
	batch := make([]slot, len(packets))
	for i, p := range packets {
		batch[i] = newSlot()
		batch[i].n = copy(batch[i].buf, p)
		batch[i].from = from
	}
	for i := range batch {
		h.handle(&batch[i], testNow)
	}
	batch[5].unsent = true
	for i := range batch {
		h.finish(&batch[i])
	}
	if len(tr.batches) != 0 {
		t.Fatalf("announces handed over before handOver: %v", tr.batches)
	}
	h.handOver()
	h.handOver() // nothing more to hand over: no call
	if len(tr.batches) != 1 || len(tr.batches[0]) != 2 || tr.batches[0][0] != 1 || tr.batches[0][1] != 2 || tr.singles != 0 {
		t.Fatalf("handed over %v and %d one by one; want one batch of ports [1 2]", tr.batches, tr.singles)
	}
	tr.batches = make([][]uint16, 0, 1000)
	if n := testing.AllocsPerRun(100, func() {
		for i := range batch {
			h.handle(&batch[i], testNow)
			h.finish(&batch[i])
		}
		h.handOver()
		tr.batches = tr.batches[:0]
	}); n > 1 { // the fake's own slice of ports
		t.Errorf("%v allocations per batch, want at most the fake's one", n)
	}
}
