package udp

import (
	"net"
	"testing"
	"time"
)

func TestFloorAnswersEveryRequestKind(t *testing.T) {
	f, err := StartFloor("127.0.0.1:0", 1, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("udp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	announce := make([]byte, announceLen)
	be.PutUint64(announce, floorConnID)
	be.PutUint32(announce[8:], actionAnnounce)
	be.PutUint32(announce[12:], 7)
	be.PutUint32(announce[92:], 0xffffffff) // numwant -1
	announce30 := append([]byte(nil), announce...)
	be.PutUint32(announce30[92:], 30)
	scrape := make([]byte, headerLen+3*infoHashLen)
	be.PutUint32(scrape[8:], actionScrape)
	be.PutUint32(scrape[12:], 9)
	connect := make([]byte, headerLen)
	be.PutUint64(connect, protocolID)
	be.PutUint32(connect[12:], 5)

	for _, tc := range []struct {
		name    string
		req     []byte
		action  uint32
		tx      uint32
		wantLen int
	}{
		{"connect", connect, actionConnect, 5, connectReplyLen},
		{"announce, tracker's choice", announce, actionAnnounce, 7, announceReplyLen + floorPeers*peer4Len},
		{"announce of 30", announce30, actionAnnounce, 7, announceReplyLen + 30*peer4Len},
		{"scrape of 3", scrape, actionScrape, 9, scrapeReplyLen + 3*scrapeEntryLen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Write(tc.req); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 2048)
			n, err := c.Read(b)
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.wantLen || be.Uint32(b) != tc.action || be.Uint32(b[4:]) != tc.tx {
				t.Fatalf("reply of %d bytes, action %d, tx %d; want %d bytes, action %d, tx %d",
					n, be.Uint32(b), be.Uint32(b[4:]), tc.wantLen, tc.action, tc.tx)
			}
		})
	}
}

func TestFloorIgnoresShortDatagrams(t *testing.T) {
	s := newSlot()
	s.n = headerLen - 1
	floorReply(&s)
	if s.reply != nil {
		t.Fatalf("reply %x to a datagram shorter than a header", s.reply)
	}
}
