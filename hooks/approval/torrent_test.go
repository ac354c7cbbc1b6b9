package approval

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var (
	_ hooks.PreHook  = (*Torrent)(nil)
	_ hooks.Reloader = (*Torrent)(nil)
	_ hooks.Closer   = (*Torrent)(nil)
)

const (
	v1Hex = "0123456789abcdef0123456789abcdef01234567"
	v2Hex = v1Hex + "89abcdef0123456789abcdef" // truncates to v1Hex
)

func TestApprovalParseInfoHash(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{v1Hex, v1Hex, true},
		{strings.ToUpper(v1Hex), v1Hex, true},
		{v2Hex, v1Hex, true},
		{"", "", false},
		{"zz", "", false},
		{v1Hex[:39], "", false},
		{v1Hex + "0", "", false},
		{v1Hex[:39] + "g", "", false},
		{v2Hex[:63] + "x", "", false}, // the truncated part must be hex too
		{v2Hex + "00", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ih, err := parseInfoHash([]byte(tt.in))
			if !tt.ok {
				if err == nil || !strings.HasSuffix(err.Error(), "is not a 40- or 64-character hex infohash") {
					t.Fatalf("parseInfoHash(%q) = %s, %v; want the infohash error", tt.in, ih, err)
				}
				return
			}
			if err != nil || ih.String() != tt.want {
				t.Fatalf("parseInfoHash(%q) = %s, %v; want %s", tt.in, ih, err, tt.want)
			}
		})
	}
}

// FuzzParseInfoHash checks the parser against the bittorrent package's.
func FuzzApprovalParseInfoHash(f *testing.F) {
	for _, s := range []string{v1Hex, v2Hex, "zz", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := parseInfoHash(in)
		want, werr := bittorrent.ParseInfoHash(string(in))
		if (err == nil) != (werr == nil) || (err == nil && got != want) {
			t.Fatalf("parseInfoHash(%q) = %s, %v; bittorrent.ParseInfoHash = %s, %v", in, got, err, want, werr)
		}
	})
}

func mustHash(s string) bittorrent.InfoHash {
	ih, err := bittorrent.ParseInfoHash(s)
	if err != nil {
		panic(err)
	}
	return ih
}

func TestApprovalTorrentDecisions(t *testing.T) {
	listed := mustHash(v1Hex)
	listedV2 := mustHash(strings.Repeat("f", 64)) // given as v2, announced truncated
	other := mustHash(strings.Repeat("e", 40))
	list := []string{v2Hex, strings.Repeat("f", 64), v1Hex} // duplicates are fine
	tests := []struct {
		mode   Mode
		hashes []bittorrent.InfoHash
		reason string // "" when approved
	}{
		{Allow, []bittorrent.InfoHash{listed}, ""},
		{Allow, []bittorrent.InfoHash{listedV2}, ""},
		{Allow, []bittorrent.InfoHash{other}, "torrent " + other.String() + " is not approved"},
		{Allow, []bittorrent.InfoHash{listed, other, listedV2}, "torrent " + other.String() + " is not approved"},
		{Deny, []bittorrent.InfoHash{listed}, "torrent " + v1Hex + " is not approved"},
		{Deny, []bittorrent.InfoHash{other}, ""},
		{Deny, []bittorrent.InfoHash{other, listedV2}, "torrent " + listedV2.String() + " is not approved"},
	}
	byMode := map[Mode]*Torrent{}
	for _, m := range []Mode{Allow, Deny} {
		h, err := NewTorrent(TorrentConfig{Mode: m, List: list}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Close() })
		byMode[m] = h
	}
	check := func(t *testing.T, what string, err error, reason string) {
		t.Helper()
		if reason == "" {
			if err != nil {
				t.Errorf("%s refused with %v, want approved", what, err)
			}
			return
		}
		var ce bittorrent.ClientError
		if !errors.As(err, &ce) || string(ce) != reason {
			t.Errorf("%s: got %v, want client error %q", what, err, reason)
		}
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			h := byMode[tt.mode]
			err := h.HandleScrape(context.Background(), &bittorrent.ScrapeRequest{InfoHashes: tt.hashes}, &bittorrent.ScrapeResponse{})
			check(t, "scrape", err, tt.reason)
			if len(tt.hashes) == 1 {
				err := h.HandleAnnounce(context.Background(), &bittorrent.AnnounceRequest{InfoHash: tt.hashes[0]}, &bittorrent.AnnounceResponse{})
				check(t, "announce", err, tt.reason)
			}
		})
	}
}

// TestHashSetMatchesMap checks the sorted, indexed set against a map for
// sizes on both sides of every index-size step, including a list crowded
// into one bucket.
func TestApprovalHashSetMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randHash := func() bittorrent.InfoHash {
		var ih bittorrent.InfoHash
		for i := range ih {
			ih[i] = byte(rng.Uint32())
		}
		return ih
	}
	for _, n := range []int{0, 1, 2, 7, 8, 9, 100, 1000, 70000, 300000} {
		for _, crowded := range []bool{false, true} {
			if crowded && n > 70000 {
				continue // slow under -race, and nothing new: the big size is for the 16-bit index cap
			}
			b := &hashBuilder{}
			want := map[bittorrent.InfoHash]bool{}
			for range n {
				ih := randHash()
				if crowded {
					ih[0], ih[1], ih[2] = 0x42, 0x42, 0x42
				}
				b.hashes = append(b.hashes, ih, ih) // every one twice
				want[ih] = true
			}
			set, count := b.build()
			if count != len(want) {
				t.Fatalf("n=%d: build counted %d, want %d", n, count, len(want))
			}
			for ih := range want {
				if !set.contains(ih) {
					t.Fatalf("n=%d crowded=%v: %s missing", n, crowded, ih)
				}
			}
			for range 1000 {
				ih := randHash()
				if set.contains(ih) != want[ih] {
					t.Fatalf("n=%d crowded=%v: contains(%s) = %v", n, crowded, ih, !want[ih])
				}
			}
			for _, edge := range []bittorrent.InfoHash{{}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
				if set.contains(edge) != want[edge] {
					t.Fatalf("n=%d: contains(%s) wrong", n, edge)
				}
			}
		}
	}
}
