package udp

import (
	"net/netip"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// FuzzParsePacket feeds arbitrary datagrams through the reader's handling
// function, as they would arrive from a client at a fixed time. Whatever the
// bytes, it must not panic, an error reply must not be longer than the
// request, no reply may exceed maxReply, and a packet that looks like a
// tracker's reply must never be answered with an error.
func FuzzParsePacket(f *testing.F) {
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	id := mintFor(f, from.Addr(), testNow)
	withURL := testAnnounce()
	withURL.options = append(append(urlOption("/announce?passkey=abc"), optionNOP), urlOption("&x=1")...)
	badOpts := testAnnounce()
	badOpts.options = []byte{optionURLData, 9, 'a'}
	for _, seed := range [][]byte{
		connectPacket(1),
		testAnnounce().packet(id, 2),
		withURL.packet(id, 3),
		badOpts.packet(id, 4),
		scrapePacket(id, 5, hashN(1), hashN(2)),
		scrapePacket(id, 6),
		testAnnounce().packet(id^0xffff, 7), // stale ID
		header(id, 9, 8),                    // unknown action
		writeError(make([]byte, 64), 1, "unknown action", 64),
		{},
		{0, 0, 4, 0x17},
		make([]byte, maxPacket+1),
	} {
		f.Add(seed)
	}
	tr := &fakeTracker{peers: testPeers(300), counts: bittorrent.Counts{Seeders: 1, Leechers: 2}}
	h := newTestHandler(f, tr)
	s := newSlot()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s.n = copy(s.buf, pkt) // a longer datagram is cut to the buffer, as by the kernel
		s.from = from
		h.handle(&s, testNow)
		h.finish(&s)
		in := s.buf[:s.n]
		switch {
		case s.reply == nil:
			if s.drop == "" && len(in) >= headerLen {
				t.Fatalf("request of %d bytes neither answered nor dropped", len(in))
			}
		case len(s.reply) > maxReply:
			t.Fatalf("reply of %d bytes exceeds %d", len(s.reply), maxReply)
		case replyAction(s.reply) == actionError:
			if len(s.reply) > len(in) {
				t.Fatalf("error reply of %d bytes answers a request of %d", len(s.reply), len(in))
			}
			if be.Uint32(in) <= actionError {
				t.Fatalf("error reply to a packet that looks like a reply: % x", in[:8])
			}
		}
		if len(in) < headerLen && s.drop == "" {
			t.Fatalf("packet of %d bytes not dropped", len(in))
		}
	})
}
