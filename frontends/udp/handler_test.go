package udp

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestHandle(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	id := mintFor(t, from.Addr(), testNow)
	stale := mintFor(t, from.Addr(), testNow.Add(-6*time.Minute))
	ann := testAnnounce()
	manyHashes := make([]bittorrent.InfoHash, 70)
	const none = ^uint32(0) // no reply
	tests := []struct {
		name        string
		pkt         []byte
		announceErr error
		scrapeErr   error
		wantAction  string
		wantResult  string
		wantDrop    string
		wantReply   uint32 // reply action, or none
		wantMsg     string // error message, for error replies
	}{
		{name: "too short", pkt: connectPacket(1)[:15], wantDrop: frontends.DropTooShort, wantReply: none},
		{name: "empty", pkt: nil, wantDrop: frontends.DropTooShort, wantReply: none},
		{name: "too long", pkt: make([]byte, maxPacket+1), wantDrop: frontends.DropTooLong, wantReply: none},
		{name: "connect", pkt: connectPacket(1), wantAction: frontends.ActionConnect, wantResult: frontends.ResultOK, wantReply: actionConnect},
		{name: "connect with trailing bytes", pkt: append(connectPacket(1), 0, 0), wantAction: frontends.ActionConnect,
			wantResult: frontends.ResultOK, wantReply: actionConnect},
		{name: "connect without magic", pkt: header(0x1234567890, actionConnect, 1), wantAction: frontends.ActionConnect,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: "connect "},
		{name: "announce", pkt: ann.packet(id, 1), wantAction: frontends.ActionAnnounce, wantResult: frontends.ResultOK, wantReply: actionAnnounce},
		{name: "announce with stale ID", pkt: ann.packet(stale, 1), wantAction: frontends.ActionAnnounce,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: string(errBadConnectionID)},
		{name: "announce with bad event", pkt: func() []byte { a := ann; a.event = 9; return a.packet(id, 1) }(),
			wantAction: frontends.ActionAnnounce, wantResult: frontends.ResultClientError, wantReply: actionError,
			wantMsg: string(bittorrent.ErrBadEvent)},
		{name: "announce with port 0", pkt: func() []byte { a := ann; a.port = 0; return a.packet(id, 1) }(),
			wantAction: frontends.ActionAnnounce, wantResult: frontends.ResultClientError, wantReply: actionError,
			wantMsg: string(bittorrent.ErrBadPort)},
		{name: "announce with bad options", pkt: func() []byte { a := ann; a.options = []byte{2, 200, 'x'}; return a.packet(id, 1) }(),
			wantAction: frontends.ActionAnnounce, wantResult: frontends.ResultClientError, wantReply: actionError,
			wantMsg: string(errBadOptions)},
		{name: "announce truncated", pkt: ann.packet(id, 1)[:60], wantAction: frontends.ActionAnnounce,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: string(errShortAnnounce)},
		{name: "announce refused by a hook", pkt: ann.packet(id, 1), announceErr: fmt.Errorf("auth: %w", bittorrent.ClientError("unregistered torrent")),
			wantAction: frontends.ActionAnnounce, wantResult: frontends.ResultClientError, wantReply: actionError,
			wantMsg: "unregistered torrent"},
		{name: "announce internal error hidden", pkt: ann.packet(id, 1), announceErr: errors.New("store: shard 3 on fire"),
			wantAction: frontends.ActionAnnounce, wantResult: frontends.ResultError, wantReply: actionError,
			wantMsg: string(bittorrent.ErrInternal)},
		{name: "scrape", pkt: scrapePacket(id, 1, hashN(1), hashN(2)), wantAction: frontends.ActionScrape,
			wantResult: frontends.ResultOK, wantReply: actionScrape},
		{name: "scrape with stale ID", pkt: scrapePacket(stale, 1, hashN(1)), wantAction: frontends.ActionScrape,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: "connection "},
		{name: "scrape of nothing", pkt: scrapePacket(id, 1), wantAction: frontends.ActionScrape,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: "missing "},
		{name: "scrape of too many", pkt: scrapePacket(id, 1, manyHashes...), wantAction: frontends.ActionScrape,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: string(bittorrent.ErrTooManyHashes)},
		{name: "scrape failing", pkt: scrapePacket(id, 1, hashN(1)), scrapeErr: errors.New("ring: no owner"),
			wantAction: frontends.ActionScrape, wantResult: frontends.ResultError, wantReply: actionError, wantMsg: "internal"},
		{name: "unknown action", pkt: header(id, 7, 1), wantAction: frontends.ActionUnknown,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: "unknown "},
		{name: "error action from a client", pkt: append(header(id, actionError, 1), "some text"...), wantAction: frontends.ActionUnknown,
			wantResult: frontends.ResultClientError, wantReply: actionError, wantMsg: "unknown action"},
		// Replies of a tracker, ours included, must not be answered: see
		// handler.fail.
		{name: "error reply bounced back", pkt: writeError(make([]byte, 64), 1, "unknown action", 64),
			wantDrop: frontends.DropResponse, wantReply: none},
		{name: "connect reply bounced back", pkt: writeConnect(make([]byte, 64), 1, id), wantDrop: frontends.DropResponse, wantReply: none},
		{name: "announce reply bounced back", pkt: writeAnnounce(make([]byte, 64), 1, &bittorrent.AnnounceResponse{Interval: 1800}, false),
			wantDrop: frontends.DropResponse, wantReply: none},
		{name: "connect with a reply's first word", pkt: header(0, actionConnect, 1), wantDrop: frontends.DropResponse, wantReply: none},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &fakeTracker{peers: testPeers(3), announceErr: tt.announceErr, scrapeErr: tt.scrapeErr}
			h := newTestHandler(t, tr)
			s := handlePacket(h, tt.pkt, from, testNow)
			if s.action != tt.wantAction || s.result != tt.wantResult || s.drop != tt.wantDrop {
				t.Errorf("action, result, drop = %q, %q, %q; want %q, %q, %q",
					s.action, s.result, s.drop, tt.wantAction, tt.wantResult, tt.wantDrop)
			}
			if tt.wantReply == none {
				if s.reply != nil {
					t.Fatalf("reply % x, want none", s.reply)
				}
				return
			}
			if len(s.reply) < 8 {
				t.Fatalf("reply % x, want action %d", s.reply, tt.wantReply)
			}
			if a := replyAction(s.reply); a != tt.wantReply || replyTxID(s.reply) != 1 {
				t.Errorf("reply action %d, txid %d; want %d, 1", a, replyTxID(s.reply), tt.wantReply)
			}
			if tt.wantReply == actionError {
				if msg := string(s.reply[8:]); !strings.HasPrefix(msg, tt.wantMsg) {
					t.Errorf("error message %q, want it to start %q", msg, tt.wantMsg)
				}
				if len(s.reply) > len(tt.pkt) {
					t.Errorf("error reply of %d bytes answers a request of %d", len(s.reply), len(tt.pkt))
				}
			}
			if s.announced != (tt.wantReply == actionAnnounce) {
				t.Errorf("announced = %v", s.announced)
			}
		})
	}
}

// TestHandleAnnounce checks what the tracker is asked and what peers come
// back, per family.
func TestHandleAnnounce(t *testing.T) {
	tests := []struct {
		name      string
		from      string
		numWant   int32
		options   []byte
		wantAddr  string
		wantPeers int
		peerLen   int
		wantWant  uint32 // NumWant the tracker saw; 0 for unset
		wantParam bittorrent.Params
	}{
		{"v4 default numwant", "192.0.2.1:5000", -1, nil, "192.0.2.1:6881", 50, peer4Len, 0, bittorrent.Params{}},
		{"v4 mapped", "[::ffff:192.0.2.1]:5000", 10, nil, "192.0.2.1:6881", 10, peer4Len, 10, bittorrent.Params{}},
		{"v6", "[2001:db8::5]:5000", 20, urlOption("/announce/abc?x=1"), "[2001:db8::5]:6881", 20, peer6Len, 20,
			bittorrent.Params{Path: "/announce/abc", Query: "x=1"}},
		{"v6 wanting more than fit", "[2001:db8::5]:5000", 500, nil, "[2001:db8::5]:6881", 67, peer6Len, 67, bittorrent.Params{}},
		{"v4 wanting more than fit", "192.0.2.1:5000", 500, nil, "192.0.2.1:6881", 202, peer4Len, 202, bittorrent.Params{}},
		// num_want is a signed 32-bit field: its largest value is only
		// capped, and any negative one means the default, as -1 does.
		{"v4 largest numwant", "192.0.2.1:5000", math.MaxInt32, nil, "192.0.2.1:6881", 202, peer4Len, 202, bittorrent.Params{}},
		{"v4 other negative numwant", "192.0.2.1:5000", math.MinInt32, nil, "192.0.2.1:6881", 50, peer4Len, 0, bittorrent.Params{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &fakeTracker{peers: testPeers(300), counts: bittorrent.Counts{Seeders: 11, Leechers: 22}}
			h := newTestHandler(t, tr)
			from := netip.MustParseAddrPort(tt.from)
			a := testAnnounce()
			a.numWant, a.options = tt.numWant, tt.options
			s := handlePacket(h, a.packet(mintFor(t, from.Addr(), testNow), 42), from, testNow)
			if s.result != frontends.ResultOK {
				t.Fatalf("result %q, reply %q", s.result, s.reply)
			}
			got := tr.lastAnnounce
			if got.Addr.String() != tt.wantAddr || got.NumWant != tt.wantWant || got.NumWantSet != (tt.numWant >= 0) ||
				got.Params.Path != tt.wantParam.Path || got.Params.Query != tt.wantParam.Query {
				t.Errorf("tracker saw addr %s, numwant %d, params %+v; want %s, %d, %+v",
					got.Addr, got.NumWant, got.Params, tt.wantAddr, tt.wantWant, tt.wantParam)
			}
			r := s.reply
			if len(r) != announceReplyLen+tt.wantPeers*tt.peerLen {
				t.Fatalf("reply of %d bytes, want %d peers of %d bytes", len(r), tt.wantPeers, tt.peerLen)
			}
			if be.Uint32(r[8:]) != 1800 || be.Uint32(r[12:]) != 22 || be.Uint32(r[16:]) != 11 {
				t.Errorf("interval, leechers, seeders = %d, %d, %d; want 1800, 22, 11", be.Uint32(r[8:]), be.Uint32(r[12:]), be.Uint32(r[16:]))
			}
		})
	}
}

// TestHandleKeyReload checks that a handler picks up new keys at its next
// packet.
func TestHandleKeyReload(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	h := newTestHandler(t, &fakeTracker{}, "old-key-0123456789")
	s := handlePacket(h, connectPacket(1), from, testNow)
	id := be.Uint64(s.reply[8:])
	scrape := scrapePacket(id, 2, hashN(1))
	for _, step := range []struct {
		keys []string
		want string
	}{
		{[]string{"new-key-0123456789", "old-key-0123456789"}, frontends.ResultOK},
		{[]string{"new-key-0123456789"}, frontends.ResultClientError},
	} {
		kr, err := newKeyring(step.keys)
		if err != nil {
			t.Fatal(err)
		}
		h.keys.Store(kr)
		if s := handlePacket(h, scrape, from, testNow); s.result != step.want {
			t.Errorf("keys %d: result %q, want %q", len(step.keys), s.result, step.want)
		}
	}
}

// TestHandleAllocs pins the zero-allocation budget of the request paths
// that see steady traffic.
func TestHandleAllocs(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	id := mintFor(t, from.Addr(), testNow)
	withURL := testAnnounce()
	withURL.options = urlOption("/announce?passkey=0123456789abcdef")
	tests := []struct {
		name string
		pkt  []byte
	}{
		{"connect", connectPacket(1)},
		{"announce", testAnnounce().packet(id, 1)},
		{"announce with repeated url data", withURL.packet(id, 1)},
		{"scrape", scrapePacket(id, 1, hashN(1), hashN(2), hashN(3))},
		{"stale connection id", testAnnounce().packet(id^1, 1)},
		{"unknown action", header(id, 9, 1)},
		{"too short", []byte{1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newTestHandler(t, &fakeTracker{peers: testPeers(50)})
			s := newSlot()
			s.n, s.from = copy(s.buf, tt.pkt), from
			h.handle(&s, testNow) // warm up: buffers grow to size once
			h.finish(&s)
			if n := testing.AllocsPerRun(100, func() {
				h.handle(&s, testNow)
				h.finish(&s)
			}); n != 0 {
				t.Errorf("%v allocations per request, want 0", n)
			}
		})
	}
}

// TestGolden pins the wire bytes of each kind of packet. The connect reply
// also pins the connection ID format, which nodes sharing keys must agree
// on. Run with -update to rewrite testdata after an intended change.
func TestGolden(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.1:5000")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:5000")
	withURL := testAnnounce()
	withURL.numWant = 3
	withURL.options = append(urlOption("/announce?passkey=abc"), optionEnd)
	tests := []struct {
		name string
		from netip.AddrPort
		pkt  []byte
	}{
		{"connect", v4, connectPacket(0xdeadbeef)},
		{"announce_v4", v4, withURL.packet(mintFor(t, v4.Addr(), testNow), 0x01020304)},
		{"announce_v6", v6, withURL.packet(mintFor(t, v6.Addr(), testNow), 0x01020304)},
		{"scrape", v4, scrapePacket(mintFor(t, v4.Addr(), testNow), 0x0a0b0c0d, hashN(1), hashN(0x40), hashN(0x80))},
		{"error", v4, testAnnounce().packet(0x1122334455667788, 0xcafef00d)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &fakeTracker{peers: testPeers(5), counts: bittorrent.Counts{Seeders: 5, Leechers: 7}}
			s := handlePacket(newTestHandler(t, tr), tt.pkt, tt.from, testNow)
			path := filepath.Join("testdata", tt.name+".hex")
			if *update {
				writeGolden(t, path, tt.name, tt.pkt, s.reply)
				return
			}
			wantReq, wantReply := readGolden(t, path)
			if !bytes.Equal(tt.pkt, wantReq) {
				t.Errorf("request differs from %s:\n got % x\nwant % x", path, tt.pkt, wantReq)
			}
			if !bytes.Equal(s.reply, wantReply) {
				t.Errorf("reply differs from %s:\n got % x\nwant % x", path, s.reply, wantReply)
			}
		})
	}
}

// Golden files hold a request and its reply as hex, 16 bytes a line, each
// under a "# request" or "# reply" line; other lines starting with '#' are
// comments.
func writeGolden(t *testing.T, path, name string, req, reply []byte) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "# Golden %s exchange; regenerate with go test -run TestGolden -update.\n", name)
	for _, sec := range []struct {
		title string
		data  []byte
	}{{"request", req}, {"reply", reply}} {
		fmt.Fprintf(&b, "# %s\n", sec.title)
		for i := 0; i < len(sec.data); i += 16 {
			fmt.Fprintf(&b, "% x\n", sec.data[i:min(i+16, len(sec.data))])
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readGolden(t *testing.T, path string) (req, reply []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	defer f.Close()
	var cur *[]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "# request":
			cur = &req
		case line == "# reply":
			cur = &reply
		case line == "" || strings.HasPrefix(line, "#"):
		case cur == nil:
			t.Fatalf("%s: bytes before a section line", path)
		default:
			b, err := hex.DecodeString(strings.ReplaceAll(line, " ", ""))
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			*cur = append(*cur, b...)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return req, reply
}
