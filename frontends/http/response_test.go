package http

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func peer(id byte, addr string) bittorrent.Peer {
	var pid bittorrent.PeerID
	for i := range pid {
		pid[i] = id
	}
	return bittorrent.Peer{ID: pid, Addr: netip.MustParseAddrPort(addr)}
}

var (
	v4Peers = []bittorrent.Peer{peer('a', "10.0.0.1:6881"), peer('b', "192.168.1.2:51413")}
	v6Peers = []bittorrent.Peer{peer('c', "[2001:db8::1]:6881"), peer('d', "[::ffff:10.0.0.3]:80")}
)

func announceResp(peers []bittorrent.Peer) *bittorrent.AnnounceResponse {
	return &bittorrent.AnnounceResponse{Interval: 1800, MinInterval: 900, Complete: 5, Incomplete: 7, Peers: peers}
}

// responseCases pin the exact bytes of every response body shape.
var responseCases = []struct {
	name  string
	build func(dst []byte) []byte
}{
	{"announce_v4_compact", func(b []byte) []byte { return appendAnnounce(b, announceResp(v4Peers), false, true, false) }},
	{"announce_v4_compact_empty", func(b []byte) []byte { return appendAnnounce(b, announceResp(nil), false, true, false) }},
	{"announce_v6_compact", func(b []byte) []byte { return appendAnnounce(b, announceResp(v6Peers[:1]), true, true, false) }},
	{"announce_v6_compact_empty", func(b []byte) []byte { return appendAnnounce(b, announceResp(nil), true, true, false) }},
	{"announce_mixed_compact", func(b []byte) []byte {
		return appendAnnounce(b, announceResp(append(append([]bittorrent.Peer{}, v4Peers...), v6Peers...)), false, true, false)
	}},
	{"announce_noncompact", func(b []byte) []byte {
		return appendAnnounce(b, announceResp([]bittorrent.Peer{v4Peers[0], v6Peers[0]}), false, false, false)
	}},
	{"announce_noncompact_no_peer_id", func(b []byte) []byte { return appendAnnounce(b, announceResp(v4Peers), false, false, true) }},
	{"failure", func(b []byte) []byte { return appendFailure(b, "info_hash must be 20 bytes") }},
	{"scrape", func(b []byte) []byte {
		resp := &bittorrent.ScrapeResponse{Files: []bittorrent.Scrape{
			{InfoHash: bittorrent.InfoHash{0: 'z', 19: 'z'}, Counts: bittorrent.Counts{Seeders: 1, Leechers: 2, Snatches: 3}},
			{InfoHash: bittorrent.InfoHash{0: 'a', 19: 'a'}, Counts: bittorrent.Counts{Seeders: 4, Leechers: 5, Snatches: 6}},
			{InfoHash: bittorrent.InfoHash{0: 'z', 19: 'z'}, Counts: bittorrent.Counts{Seeders: 1, Leechers: 2, Snatches: 3}},
		}}
		return appendScrape(b, resp)
	}},
	{"scrape_empty", func(b []byte) []byte { return appendScrape(b, &bittorrent.ScrapeResponse{}) }},
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestResponseGolden(t *testing.T) {
	for _, tc := range responseCases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.build(nil)
			checkGolden(t, tc.name, got)
			if _, err := (bencode.Decoder{SortedKeys: true}).Decode(got); err != nil {
				t.Errorf("not canonical bencode: %v", err)
			}
		})
	}
}

func TestAnnounceResponseDecodes(t *testing.T) {
	v, err := bencode.Decode(appendAnnounce(nil, announceResp(v4Peers), false, true, false))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"complete": int64(5), "incomplete": int64(7), "interval": int64(1800), "min interval": int64(900),
		"peers": "\x0a\x00\x00\x01\x1a\xe1\xc0\xa8\x01\x02\xc8\xd5",
	}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("got %#v\nwant %#v", v, want)
	}

	v, err = bencode.Decode(appendAnnounce(nil, announceResp(v6Peers), true, true, false))
	if err != nil {
		t.Fatal(err)
	}
	d := v.(map[string]any)
	if d["peers"] != "\x0a\x00\x00\x03\x00\x50" { // the mapped peer is IPv4
		t.Errorf("peers = %q", d["peers"])
	}
	if p6 := d["peers6"].(string); len(p6) != 18 || p6[:2] != "\x20\x01" || p6[16:] != "\x1a\xe1" {
		t.Errorf("peers6 = %q", p6)
	}

	v, err = bencode.Decode(appendAnnounce(nil, announceResp(v6Peers[:1]), false, false, false))
	if err != nil {
		t.Fatal(err)
	}
	wantPeers := []any{map[string]any{"ip": "2001:db8::1", "peer id": strings.Repeat("c", 20), "port": int64(6881)}}
	if got := v.(map[string]any)["peers"]; !reflect.DeepEqual(got, wantPeers) {
		t.Errorf("non-compact peers = %#v, want %#v", got, wantPeers)
	}
}

func TestResponseHeadGolden(t *testing.T) {
	date := []byte(time.Date(2024, 3, 9, 8, 7, 6, 0, time.UTC).Format(dateLayout))
	tests := []struct {
		name string
		h    head
	}{
		{"head_200_keepalive", head{minor: 1, status: status200, contentLen: 123, date: date}},
		{"head_200_http10_keepalive", head{minor: 0, status: status200, conn: connKeepAlive, contentLen: 5, date: date}},
		{"head_405_close", head{minor: 1, status: status405, conn: connClose, allow: true, contentLen: 0, date: date}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGolden(t, tt.name, appendHead(nil, tt.h))
		})
	}
}

func TestDateCache(t *testing.T) {
	var d dateCache
	t0 := time.Date(2024, 3, 9, 8, 7, 6, 0, time.FixedZone("X", 3600))
	if got := string(d.get(t0)); got != "Sat, 09 Mar 2024 07:07:06 GMT" {
		t.Errorf("date = %q", got)
	}
	if got := string(d.get(t0.Add(999 * time.Millisecond))); got != "Sat, 09 Mar 2024 07:07:06 GMT" {
		t.Errorf("date within the second = %q", got)
	}
	if got := string(d.get(t0.Add(time.Second))); got != "Sat, 09 Mar 2024 07:07:07 GMT" {
		t.Errorf("date a second later = %q", got)
	}
}

func TestResponseWritersDoNotAllocate(t *testing.T) {
	peers := make([]bittorrent.Peer, 50)
	for i := range peers {
		peers[i] = peer(byte(i), "10.0.0.1:6881")
	}
	resp := announceResp(peers)
	buf := make([]byte, 0, 8192)
	for _, compact := range []bool{true, false} {
		if n := testing.AllocsPerRun(100, func() { appendAnnounce(buf[:0], resp, false, compact, false) }); n != 0 {
			t.Errorf("appendAnnounce(compact=%v) allocated %v times, want 0", compact, n)
		}
	}
	sresp := &bittorrent.ScrapeResponse{Files: make([]bittorrent.Scrape, 10)}
	if n := testing.AllocsPerRun(100, func() { appendScrape(buf[:0], sresp) }); n != 0 {
		t.Errorf("appendScrape allocated %v times, want 0", n)
	}
}
