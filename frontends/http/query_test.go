package http

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// escapeAll percent-encodes every byte, as many clients do for hashes.
func escapeAll(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, "%%%02X", c)
	}
	return sb.String()
}

var (
	testHash = bittorrent.InfoHash{0x00, 0x01, 0x02, 0x20, 0x2b, 0x25, 0x26, 0x3d, 0x7f, 0x80, 0xff, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'}
	testPeer = bittorrent.PeerID{'-', 'q', 'B', '4', '6', '0', '0', '-', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', 'a', 'b'}
)

// baseQuery is a minimal valid announce; tests append or replace parameters.
var baseQuery = "info_hash=" + escapeAll(testHash[:]) + "&peer_id=" + url.QueryEscape(string(testPeer[:])) + "&port=6881&left=0"

func TestParseAnnounce(t *testing.T) {
	base := bittorrent.AnnounceRequest{InfoHash: testHash, PeerID: testPeer, Compact: true}
	tests := []struct {
		name     string
		query    string
		wantPort uint16
		want     func(r *bittorrent.AnnounceRequest)
	}{
		{"minimal", baseQuery, 6881, func(*bittorrent.AnnounceRequest) {}},
		{"all fields", baseQuery + "&uploaded=10&downloaded=20&event=started&numwant=30&compact=1&no_peer_id=1&key=DEADbeef&ip=1.2.3.4&extra=x",
			6881, func(r *bittorrent.AnnounceRequest) {
				r.Uploaded, r.Downloaded, r.Event = 10, 20, bittorrent.EventStarted
				r.NumWant, r.NumWantSet, r.NoPeerID, r.Key = 30, true, true, 0xdeadbeef
			}},
		{"left non-zero", strings.Replace(baseQuery, "left=0", "left=18446744073709551615", 1), 6881,
			func(r *bittorrent.AnnounceRequest) { r.Left = math.MaxUint64 }},
		{"raw unreserved hash bytes", "info_hash=abcdefghijklmnopqrst&peer_id=ABCDEFGHIJKLMNOPQRST&port=1&left=5", 1,
			func(r *bittorrent.AnnounceRequest) {
				copy(r.InfoHash[:], "abcdefghijklmnopqrst")
				copy(r.PeerID[:], "ABCDEFGHIJKLMNOPQRST")
				r.Left = 5
			}},
		{"plus is space", "info_hash=+++++++++++++++++++%20&peer_id=" + url.QueryEscape(string(testPeer[:])) + "&port=65535&left=0", 65535,
			func(r *bittorrent.AnnounceRequest) { r.InfoHash = bittorrent.InfoHash([]byte(strings.Repeat(" ", 20))) }},
		{"escaped key names", strings.Replace(baseQuery, "peer_id=", "peer%5Fid=", 1), 6881, func(*bittorrent.AnnounceRequest) {}},
		{"compact=0", baseQuery + "&compact=0", 6881, func(r *bittorrent.AnnounceRequest) { r.Compact = false }},
		{"compact without value", baseQuery + "&compact", 6881, func(*bittorrent.AnnounceRequest) {}},
		{"no_peer_id=0", baseQuery + "&no_peer_id=0", 6881, func(*bittorrent.AnnounceRequest) {}},
		{"no_peer_id bare", baseQuery + "&no_peer_id", 6881, func(r *bittorrent.AnnounceRequest) { r.NoPeerID = true }},
		{"event completed", baseQuery + "&event=completed", 6881, func(r *bittorrent.AnnounceRequest) { r.Event = bittorrent.EventCompleted }},
		{"event stopped", baseQuery + "&event=stopped", 6881, func(r *bittorrent.AnnounceRequest) { r.Event = bittorrent.EventStopped }},
		{"event empty", baseQuery + "&event=", 6881, func(*bittorrent.AnnounceRequest) {}},
		{"event spelled empty", baseQuery + "&event=empty", 6881, func(*bittorrent.AnnounceRequest) {}},
		{"event paused (BEP 21)", baseQuery + "&event=paused", 6881, func(*bittorrent.AnnounceRequest) {}},
		{"numwant zero", baseQuery + "&numwant=0", 6881, func(r *bittorrent.AnnounceRequest) { r.NumWantSet = true }},
		{"numwant huge is clamped", baseQuery + "&numwant=99999999999", 6881, func(r *bittorrent.AnnounceRequest) {
			r.NumWant, r.NumWantSet = math.MaxUint32, true
		}},
		{"leading zeros", strings.Replace(baseQuery, "port=6881", "port=006881", 1), 6881, func(*bittorrent.AnnounceRequest) {}},
		{"escaped digits", strings.Replace(baseQuery, "port=6881", "port=%36881", 1), 6881, func(*bittorrent.AnnounceRequest) {}},
		{"key decimal", baseQuery + "&key=12345", 6881, func(r *bittorrent.AnnounceRequest) { r.Key = 0x12345 }},
		{"key text is hashed", baseQuery + "&key=notahexkey", 6881, func(r *bittorrent.AnnounceRequest) { r.Key = parseKey([]byte("notahexkey")) }},
		{"empty pairs", "&&" + baseQuery + "&&", 6881, func(*bittorrent.AnnounceRequest) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Start from garbage to check every field is reset.
			got := bittorrent.AnnounceRequest{Uploaded: 9, Downloaded: 9, Left: 9, NumWant: 9, NumWantSet: true, NoPeerID: true, Key: 9, Event: bittorrent.EventStopped}
			port, err := parseAnnounce([]byte(tt.query), &got)
			if err != nil {
				t.Fatalf("parseAnnounce(%q): %v", tt.query, err)
			}
			want := base
			tt.want(&want)
			if port != tt.wantPort {
				t.Errorf("port = %d, want %d", port, tt.wantPort)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParseAnnounceErrors(t *testing.T) {
	without := func(param string) string {
		var kept []string
		for _, kv := range strings.Split(baseQuery, "&") {
			if !strings.HasPrefix(kv, param+"=") {
				kept = append(kept, kv)
			}
		}
		return strings.Join(kept, "&")
	}
	replace := func(from, to string) string { return strings.Replace(baseQuery, from, to, 1) }
	tests := []struct {
		name  string
		query string
		want  error
	}{
		{"empty", "", bittorrent.ErrMissingInfoHash},
		{"missing info_hash", without("info_hash"), bittorrent.ErrMissingInfoHash},
		{"missing peer_id", without("peer_id"), bittorrent.ErrMissingPeerID},
		{"missing port", without("port"), bittorrent.ErrMissingPort},
		{"missing left", without("left"), ErrMissingLeft},
		{"short info_hash", replace("info_hash=%00", "info_hash="), bittorrent.ErrBadInfoHash},
		{"long info_hash", replace("info_hash=", "info_hash=x"), bittorrent.ErrBadInfoHash},
		{"empty info_hash", without("info_hash") + "&info_hash", bittorrent.ErrBadInfoHash},
		{"v2 hex info_hash", replace("info_hash="+escapeAll(testHash[:]), "info_hash="+strings.Repeat("ab", 32)), bittorrent.ErrBadInfoHash},
		{"short peer_id", without("peer_id") + "&peer_id=abc", bittorrent.ErrBadPeerID},
		{"bad escape", replace("info_hash=%00", "info_hash=%0g"), ErrBadEscape},
		{"truncated escape", without("peer_id") + "&peer_id=%4", ErrBadEscape},
		{"port zero", replace("port=6881", "port=0"), bittorrent.ErrBadPort},
		{"port too big", replace("port=6881", "port=65536"), bittorrent.ErrBadPort},
		{"port negative", replace("port=6881", "port=-1"), bittorrent.ErrBadPort},
		{"port empty", replace("port=6881", "port="), bittorrent.ErrBadPort},
		{"port text", replace("port=6881", "port=http"), bittorrent.ErrBadPort},
		{"left negative", replace("left=0", "left=-1"), ErrBadLeft},
		{"left overflow", replace("left=0", "left=18446744073709551616"), ErrBigLeft},
		{"left very long", replace("left=0", "left="+strings.Repeat("1", 100)), ErrBigLeft},
		{"left long, not a number", replace("left=0", "left="+strings.Repeat("1", 30)+"x"), ErrBadLeft},
		{"left overflow, not a number", replace("left=0", "left=99999999999999999999x"), ErrBadLeft},
		{"uploaded overflow", baseQuery + "&uploaded=99999999999999999999", ErrBigUploaded},
		{"downloaded overflow", baseQuery + "&downloaded=99999999999999999999", ErrBigDownloaded},
		{"numwant past 64 bits", baseQuery + "&numwant=99999999999999999999", ErrBigNumWant},
		{"port overflow", replace("port=6881", "port=99999999999999999999"), bittorrent.ErrBadPort},
		{"left plus", replace("left=0", "left=%2B1"), ErrBadLeft},
		{"left float", replace("left=0", "left=1.5"), ErrBadLeft},
		{"uploaded negative", baseQuery + "&uploaded=-5", ErrBadUploaded},
		{"uploaded empty", baseQuery + "&uploaded=", ErrBadUploaded},
		{"downloaded negative", baseQuery + "&downloaded=-5", ErrBadDownloaded},
		{"numwant negative", baseQuery + "&numwant=-1", ErrBadNumWant},
		{"event unknown", baseQuery + "&event=resumed", bittorrent.ErrBadEvent},
		{"event long", baseQuery + "&event=" + strings.Repeat("s", 40), bittorrent.ErrBadEvent},
		{"repeated info_hash", baseQuery + "&info_hash=" + escapeAll(testHash[:]), repeatedErr[pInfoHash]},
		{"repeated escaped key", baseQuery + "&p%6Frt=1", repeatedErr[pPort]},
		{"repeated event", baseQuery + "&event=started&event=stopped", repeatedErr[pEvent]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req bittorrent.AnnounceRequest
			_, err := parseAnnounce([]byte(tt.query), &req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("parseAnnounce(%q) = %v, want %v", tt.query, err, tt.want)
			}
			var ce bittorrent.ClientError
			if !errors.As(err, &ce) {
				t.Errorf("error %v is not a ClientError, so it would not reach the client", err)
			}
		})
	}
	if got := repeatedErr[pPort].Error(); got != "port given more than once" {
		t.Errorf("repeated port error = %q", got)
	}
}

func TestParseScrape(t *testing.T) {
	h2 := bittorrent.InfoHash{19: 1}
	tests := []struct {
		name    string
		query   string
		want    []bittorrent.InfoHash
		wantErr error
	}{
		{"none", "", nil, nil},
		{"others ignored", "passkey=x&foo", nil, nil},
		{"one", "info_hash=" + escapeAll(testHash[:]), []bittorrent.InfoHash{testHash}, nil},
		{"two and a repeat", "info_hash=" + escapeAll(testHash[:]) + "&x=1&info_hash=" + escapeAll(h2[:]) + "&info_hash=" + escapeAll(testHash[:]),
			[]bittorrent.InfoHash{testHash, h2, testHash}, nil},
		{"short", "info_hash=abc", nil, bittorrent.ErrBadInfoHash},
		{"bad escape", "info_hash=%%", nil, ErrBadEscape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseScrape([]byte(tt.query), nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseScrape(%q) error = %v, want %v", tt.query, err, tt.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseScrape(%q) = %x, want %x", tt.query, got, tt.want)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
	}{
		{"0", 0},
		{"ffffffff", 0xffffffff},
		{"A1b2", 0xa1b2},
		{"%41", 0xa},
	}
	for _, tt := range tests {
		if got := parseKey([]byte(tt.in)); got != tt.want {
			t.Errorf("parseKey(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
	// Non-hex keys are hashed: stable, and different keys differ.
	first, again := parseKey([]byte("123456789")), parseKey([]byte("123456789"))
	if first != again || parseKey([]byte("abcdefgh1")) == parseKey([]byte("abcdefgh2")) {
		t.Error("hashed keys are not stable or collide trivially")
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	q := []byte(baseQuery + "&uploaded=10&downloaded=20&event=started&numwant=30&compact=1&no_peer_id=1&key=DEADbeef")
	var req bittorrent.AnnounceRequest
	if n := testing.AllocsPerRun(100, func() { _, _ = parseAnnounce(q, &req) }); n != 0 {
		t.Errorf("parseAnnounce allocated %v times, want 0", n)
	}
	sq := []byte("info_hash=" + escapeAll(testHash[:]) + "&info_hash=" + escapeAll(testHash[:]))
	buf := make([]bittorrent.InfoHash, 0, 4)
	if n := testing.AllocsPerRun(100, func() { _, _ = parseScrape(sq, buf[:0]) }); n != 0 {
		t.Errorf("parseScrape allocated %v times, want 0", n)
	}
}
