package approval

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var (
	_ hooks.PreHook  = (*Client)(nil)
	_ hooks.Reloader = (*Client)(nil)
	_ hooks.Closer   = (*Client)(nil)
)

func TestApprovalParsePrefix(t *testing.T) {
	tests := []struct {
		in   string
		want string
		err  string
	}{
		{"-qB4650-", "-qB4650-", ""},
		{"-qB", "-qB", ""},
		{"T03I", "T03I", ""},         // Shadow style: BitTornado 0.3.18
		{"M4-3-6--", "M4-3-6--", ""}, // Mainline style is a plain prefix too
		{"%00%FFab", "\x00\xffab", ""},
		{"%2d%2D", "--", ""},
		{"%25", "%", ""},
		{strings.Repeat("x", 20), strings.Repeat("x", 20), ""},
		{"", "", "empty prefix"},
		{strings.Repeat("x", 21), "", "21 bytes is longer than a peer_id"},
		{strings.Repeat("%41", 21), "", "21 bytes is longer than a peer_id"},
		{"a b", "", "byte 1 (0x20) must be written as %20"},
		{"ab#", "", "must be written as %23"},
		{"-µT", "", "byte 1 (0xc2) must be written as %C2"},
		{"%4", "", "% at byte 0 is not followed by two hex digits"},
		{"ab%", "", "% at byte 2 is not followed"},
		{"%zz", "", "% at byte 0 is not followed"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parsePrefix([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parsePrefix(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parsePrefix(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// FuzzParsePrefix checks that the parser never panics and that what it
// accepts prints back (showPrefix) to an entry that parses the same.
func FuzzApprovalParsePrefix(f *testing.F) {
	for _, s := range []string{"-qB4650-", "T03I", "%00%ff", "%", "a b", "%%41"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := parsePrefix(in)
		if err != nil {
			return
		}
		if len(p) == 0 || len(p) > 20 {
			t.Fatalf("parsePrefix(%q) accepted %d bytes", in, len(p))
		}
		back, err := parsePrefix([]byte(showPrefix([]byte(p))))
		if err != nil || back != p {
			t.Fatalf("round trip of %q: %q, %v", p, back, err)
		}
	})
}

func pid(s string) bittorrent.PeerID {
	var id bittorrent.PeerID
	copy(id[:], s)
	for i := len(s); i < len(id); i++ {
		id[i] = 'x'
	}
	return id
}

func TestApprovalClientDecisions(t *testing.T) {
	list := []string{"-qB4650-", "-TR", "T03I", "%00%01"}
	tests := []struct {
		mode   Mode
		peerID bittorrent.PeerID
		reason string // "" when allowed
	}{
		{Allow, pid("-qB4650-"), ""},
		{Allow, pid("-qB4640-"), "client -qB4640- is not allowed"},
		{Allow, pid("-TR2940-"), ""},
		{Allow, pid("T03I--"), ""},
		{Allow, pid("T03H--"), "client T03H--xx is not allowed"},
		{Allow, pid("\x00\x01abc"), ""},
		{Allow, pid("\x00\x02 #%"), "client %00%02%20%23%25xxx is not allowed"},
		{Deny, pid("-qB4650-"), "client -qB4650- is not allowed"},
		{Deny, pid("-qB4651-"), ""},
		{Deny, pid("-TR4000-"), "client -TR4000- is not allowed"},
		{Deny, pid("T03I-----"), "client T03I---- is not allowed"},
		{Deny, pid("-UT3550-"), ""},
	}
	hooksByMode := map[Mode]*Client{}
	for _, m := range []Mode{Allow, Deny} {
		c, err := NewClient(ClientConfig{Mode: m, List: list}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		hooksByMode[m] = c
	}
	for _, tt := range tests {
		t.Run(string(tt.mode)+"/"+showPrefix(tt.peerID[:8]), func(t *testing.T) {
			req := bittorrent.AnnounceRequest{PeerID: tt.peerID}
			err := hooksByMode[tt.mode].HandleAnnounce(context.Background(), &req, &bittorrent.AnnounceResponse{})
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("refused with %v, want allowed", err)
				}
				return
			}
			var ce bittorrent.ClientError
			if !errors.As(err, &ce) || string(ce) != tt.reason {
				t.Fatalf("got %v, want client error %q", err, tt.reason)
			}
		})
	}
	if err := hooksByMode[Allow].HandleScrape(context.Background(), &bittorrent.ScrapeRequest{}, &bittorrent.ScrapeResponse{}); err != nil {
		t.Errorf("scrape refused: %v", err)
	}
}

// TestClientShadowPrefixes shows that prefixes of different lengths, like
// a short Azureus client code and a full Shadow version, are all checked.
func TestApprovalClientShadowPrefixes(t *testing.T) {
	set, _ := func() (*prefixSet, int) {
		b := &prefixBuilder{m: map[string]struct{}{}}
		for _, e := range []string{"S", "-qB", "A310--", "-UT3550-"} {
			if err := b.add([]byte(e)); err != nil {
				t.Fatal(err)
			}
		}
		return b.build()
	}()
	if want := []int{1, 3, 6, 8}; !slices.Equal(set.lens, want) {
		t.Errorf("lens = %v, want %v", set.lens, want)
	}
	for id, want := range map[string]bool{
		"S587----": true, "-qB5000-": true, "A310--": true, "A311--": false,
		"-UT3550-": true, "-UT3560-": false, "": false, "-q": false,
	} {
		if got := set.match([]byte(id)); got != want {
			t.Errorf("match(%q) = %v, want %v", id, got, want)
		}
	}
}
