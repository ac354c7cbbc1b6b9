package udp

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unsafe"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

func TestParseAnnounce(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.7")
	v4in6 := netip.MustParseAddr("::ffff:192.0.2.7")
	v6 := netip.MustParseAddr("2001:db8::7")
	base := testAnnounce()
	want := bittorrent.AnnounceRequest{
		InfoHash: base.infoHash, PeerID: base.peerID,
		Addr:  netip.AddrPortFrom(v4, 6881),
		Event: bittorrent.EventStarted, Downloaded: 1, Left: 1000, Uploaded: 2,
		Key: 0xabcdef01,
	}
	with := func(f func(*announce)) []byte {
		a := testAnnounce()
		f(&a)
		return a.packet(1, 2)
	}
	wantWith := func(f func(*bittorrent.AnnounceRequest)) bittorrent.AnnounceRequest {
		r := want
		f(&r)
		return r
	}
	tests := []struct {
		name    string
		pkt     []byte
		ip      netip.Addr
		want    bittorrent.AnnounceRequest
		wantErr error
	}{
		{"plain", base.packet(1, 2), v4, want, nil},
		{"ipv4-mapped source is unmapped", base.packet(1, 2), v4in6, want, nil},
		{"zone dropped", base.packet(1, 2), netip.MustParseAddr("2001:db8::7%eth0"),
			wantWith(func(r *bittorrent.AnnounceRequest) { r.Addr = netip.AddrPortFrom(v6, 6881) }), nil},
		{"ipv6 source", base.packet(1, 2), v6,
			wantWith(func(r *bittorrent.AnnounceRequest) { r.Addr = netip.AddrPortFrom(v6, 6881) }), nil},
		{"ip field ignored", with(func(a *announce) { a.ip = 0x01020304 }), v4, want, nil},
		{"numwant set", with(func(a *announce) { a.numWant = 10 }), v4,
			wantWith(func(r *bittorrent.AnnounceRequest) { r.NumWant, r.NumWantSet = 10, true }), nil},
		{"numwant zero is set", with(func(a *announce) { a.numWant = 0 }), v4,
			wantWith(func(r *bittorrent.AnnounceRequest) { r.NumWantSet = true }), nil},
		{"numwant other negative is unset", with(func(a *announce) { a.numWant = -7 }), v4, want, nil},
		{"events", with(func(a *announce) { a.event = 3 }), v4,
			wantWith(func(r *bittorrent.AnnounceRequest) { r.Event = bittorrent.EventStopped }), nil},
		{"bad event", with(func(a *announce) { a.event = 4 }), v4, bittorrent.AnnounceRequest{}, bittorrent.ErrBadEvent},
		{"port zero", with(func(a *announce) { a.port = 0 }), v4, bittorrent.AnnounceRequest{}, bittorrent.ErrBadPort},
		{"short", base.packet(1, 2)[:97], v4, bittorrent.AnnounceRequest{}, errShortAnnounce},
		{"url data", with(func(a *announce) { a.options = urlOption("/announce?passkey=abc&x=1") }), v4,
			wantWith(func(r *bittorrent.AnnounceRequest) {
				r.Params = bittorrent.Params{Path: "/announce", Query: "passkey=abc&x=1"}
			}), nil},
		{"url data concatenated around nop, then end and trailing junk", with(func(a *announce) {
			a.options = append(append(append(urlOption("/ann"), optionNOP), urlOption("ounce?a=b")...), optionEnd, 0xff, 0xff)
		}), v4, wantWith(func(r *bittorrent.AnnounceRequest) {
			r.Params = bittorrent.Params{Path: "/announce", Query: "a=b"}
		}), nil},
		{"url data longer than one option", with(func(a *announce) { a.options = urlOption("/" + strings.Repeat("p", 300)) }), v4,
			wantWith(func(r *bittorrent.AnnounceRequest) { r.Params.Path = "/" + strings.Repeat("p", 300) }), nil},
		{"unknown option skipped", with(func(a *announce) {
			a.options = append([]byte{0x7f, 2, 'x', 'y'}, urlOption("/a")...)
		}), v4, wantWith(func(r *bittorrent.AnnounceRequest) { r.Params.Path = "/a" }), nil},
		{"only nops and end", with(func(a *announce) { a.options = []byte{optionNOP, optionNOP, optionEnd} }), v4, want, nil},
		{"option length past the end", with(func(a *announce) { a.options = []byte{optionURLData, 5, 'a'} }), v4,
			bittorrent.AnnounceRequest{}, errBadOptions},
		{"option without length", with(func(a *announce) { a.options = []byte{optionNOP, optionURLData} }), v4,
			bittorrent.AnnounceRequest{}, errBadOptions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got bittorrent.AnnounceRequest
			u := urlData{buf: make([]byte, 0, maxPacket)}
			err := parseAnnounce(tt.pkt, tt.ip, &got, &u)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseAnnounce: error %v, want %v", err, tt.wantErr)
			}
			if err == nil && !equalAnnounce(got, tt.want) {
				t.Errorf("parseAnnounce:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func equalAnnounce(a, b bittorrent.AnnounceRequest) bool {
	pa, pb := a.Params, b.Params
	return a.InfoHash == b.InfoHash && a.PeerID == b.PeerID && a.Addr == b.Addr && a.Event == b.Event &&
		a.Uploaded == b.Uploaded && a.Downloaded == b.Downloaded && a.Left == b.Left &&
		a.NumWant == b.NumWant && a.NumWantSet == b.NumWantSet && a.Compact == b.Compact &&
		a.NoPeerID == b.NoPeerID && a.Key == b.Key &&
		pa.Path == pb.Path && pa.Query == pb.Query && len(pa.Route) == 0 && pa.Authorization == ""
}

func TestURLDataReusesString(t *testing.T) {
	u := urlData{buf: make([]byte, 0, maxPacket)}
	p1, _ := u.parse(urlOption("/announce?k=1"))
	p2, _ := u.parse(urlOption("/announce?k=1"))
	if p1.Path != p2.Path || !sameString(p1.Path, p2.Path) {
		t.Errorf("repeated URL data got a new string")
	}
	p3, _ := u.parse(urlOption("/announce?k=2"))
	if p3.Query != "k=2" || p1.Query != "k=1" {
		t.Errorf("new URL data changed an earlier string: %q, %q", p1.Query, p3.Query)
	}
}

// sameString reports whether a and b share their bytes in memory.
func sameString(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) } //nolint:gosec // G103: comparing addresses is the test

func TestParseScrape(t *testing.T) {
	hashes := []bittorrent.InfoHash{hashN(1), hashN(2), hashN(3)}
	tests := []struct {
		name string
		pkt  []byte
		want []bittorrent.InfoHash
	}{
		{"none", scrapePacket(1, 2), nil},
		{"three in order", scrapePacket(1, 2, hashes...), hashes},
		{"trailing partial hash ignored", append(scrapePacket(1, 2, hashes[0]), 1, 2, 3), hashes[:1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseScrape(tt.pkt, nil)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d hashes, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("hash %d = %s, want %s", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestWriteAnnounce(t *testing.T) {
	p4 := bittorrent.Peer{Addr: netip.MustParseAddrPort("10.1.2.3:6881")}
	p4in6 := bittorrent.Peer{Addr: netip.MustParseAddrPort("[::ffff:10.1.2.4]:6882")}
	p6 := bittorrent.Peer{Addr: netip.MustParseAddrPort("[2001:db8::1]:6883")}
	resp := bittorrent.AnnounceResponse{Interval: 1800, Complete: 3, Incomplete: 4, Peers: []bittorrent.Peer{p4, p6, p4in6}}
	tests := []struct {
		name string
		v6   bool
		out  int
		want []byte
	}{
		{"v4 peers only, mapped unmapped", false, maxReply, concat(
			[]byte{0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0x07, 0x08, 0, 0, 0, 4, 0, 0, 0, 3},
			[]byte{10, 1, 2, 3, 0x1a, 0xe1}, []byte{10, 1, 2, 4, 0x1a, 0xe2})},
		{"v6 peers only", true, maxReply, concat(
			[]byte{0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0x07, 0x08, 0, 0, 0, 4, 0, 0, 0, 3},
			netip.MustParseAddr("2001:db8::1").AsSlice(), []byte{0x1a, 0xe3})},
		{"cut to fit", false, announceReplyLen + peer4Len + 5, concat(
			[]byte{0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0x07, 0x08, 0, 0, 0, 4, 0, 0, 0, 3},
			[]byte{10, 1, 2, 3, 0x1a, 0xe1})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := writeAnnounce(make([]byte, tt.out), 9, &resp, tt.v6)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("writeAnnounce:\n got % x\nwant % x", got, tt.want)
			}
		})
	}
}

func TestWriteAnnounceFillsMaxReply(t *testing.T) {
	resp := bittorrent.AnnounceResponse{Peers: testPeers(300)}
	for _, v6 := range []bool{false, true} {
		got := writeAnnounce(make([]byte, maxReply), 1, &resp, v6)
		per, want := peer4Len, 202
		if v6 {
			per, want = peer6Len, 67
		}
		if n := (len(got) - announceReplyLen) / per; n != want || len(got) > maxReply {
			t.Errorf("v6=%v: %d peers in %d bytes, want %d peers within %d bytes", v6, n, len(got), want, maxReply)
		}
	}
}

func TestWriteScrape(t *testing.T) {
	files := []bittorrent.Scrape{
		{Counts: bittorrent.Counts{Seeders: 1, Snatches: 2, Leechers: 3}},
		{Counts: bittorrent.Counts{Seeders: 4, Snatches: 5, Leechers: 6}},
	}
	want := []byte{0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6}
	if got := writeScrape(make([]byte, maxReply), 7, files); !bytes.Equal(got, want) {
		t.Errorf("writeScrape:\n got % x\nwant % x", got, want)
	}
	if got := writeScrape(make([]byte, 30), 7, files); !bytes.Equal(got, want[:20]) {
		t.Errorf("writeScrape into 30 bytes:\n got % x\nwant % x", got, want[:20])
	}
}

func TestWriteError(t *testing.T) {
	tests := []struct {
		name  string
		msg   string
		limit int
		want  string
	}{
		{"fits", "unknown action", 100, "unknown action"},
		{"cut to the request's size", "unknown action", 16, "unknown "},
		{"cut before a split character", "ab\u00e9cdefgh", 8 + 3, "ab"},
		{"keeps a whole character", "ab\u00e9cdefgh", 8 + 4, "ab\u00e9"},
		{"cut to the buffer", strings.Repeat("x", 2000), 5000, strings.Repeat("x", maxReply-errorReplyLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := writeError(make([]byte, maxReply), 0x01020304, tt.msg, tt.limit)
			want := append([]byte{0, 0, 0, 3, 1, 2, 3, 4}, tt.want...)
			if !bytes.Equal(got, want) {
				t.Errorf("writeError:\n got %q\nwant %q", got, want)
			}
			if len(got) > tt.limit {
				t.Errorf("error reply of %d bytes exceeds limit %d", len(got), tt.limit)
			}
		})
	}
}

func TestWriteConnect(t *testing.T) {
	want := []byte{0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8}
	if got := writeConnect(make([]byte, maxReply), 0xdeadbeef, 0x0102030405060708); !bytes.Equal(got, want) {
		t.Errorf("writeConnect = % x, want % x", got, want)
	}
}

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}
