package loadgen

import (
	"errors"
	"os"
	"testing"
)

func TestScanReply(t *testing.T) {
	// The HTTP frontend's golden bodies check that both sides agree.
	golden := func(name string) string {
		b, err := os.ReadFile("../../../../frontends/http/testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name    string
		in      string
		a       action
		failure bool
		entries int
		err     error
	}{
		{"compact v4", "d8:completei5e10:incompletei7e8:intervali1800e5:peers12:aaaaaabbbbbbe", actAnnounce, false, 2, nil},
		{"compact v4 and v6", "d5:peers6:aaaaaa6:peers618:bbbbbbbbbbbbbbbbbbe", actAnnounce, false, 2, nil},
		{"dictionary peers", "d5:peersld2:ip9:127.0.0.14:porti1eed2:ip9:127.0.0.14:porti2eeee", actAnnounce, false, 2, nil},
		{"failure", "d14:failure reason26:info_hash must be 20 bytese", actAnnounce, true, 0, nil},
		{"scrape", "d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei4ee20:bbbbbbbbbbbbbbbbbbbbd8:completei1eeee", actScrape, false, 2, nil},
		{"golden failure", golden("failure.golden"), actAnnounce, true, 0, nil},
		{"golden scrape", golden("scrape.golden"), actScrape, false, 2, nil},
		{"golden announce", golden("announce_v4_compact.golden"), actAnnounce, false, 2, nil},
		{"empty", "", actAnnounce, false, 0, errBencode},
		{"html", "<html>", actAnnounce, false, 0, errBencode},
		{"unterminated", "d5:peers6:aaaaaa", actAnnounce, false, 0, errBencode},
		{"string too long", "d5:peers99:aae", actAnnounce, false, 0, errBencode},
		{"trailing bytes", "d5:peers0:ee", actAnnounce, false, 0, errBencode},
		{"integer key", "di1ei2ee", actAnnounce, false, 0, errBencode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			failure, entries, err := scanReply([]byte(tt.in), tt.a)
			if !errors.Is(err, tt.err) || failure != tt.failure || entries != tt.entries {
				t.Errorf("got failure %v, entries %d, error %v; want %v, %d, %v", failure, entries, err, tt.failure, tt.entries, tt.err)
			}
		})
	}
}

func FuzzScanReply(f *testing.F) {
	f.Add([]byte("d5:peers6:aaaaaae"), true)
	f.Add([]byte("d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei4eeee"), false)
	f.Fuzz(func(t *testing.T, b []byte, announce bool) {
		a := actScrape
		if announce {
			a = actAnnounce
		}
		if _, entries, _ := scanReply(b, a); entries < 0 || entries > len(b) {
			t.Errorf("%d entries in %d bytes", entries, len(b))
		}
	})
}

func TestAppendEscaped(t *testing.T) {
	got := string(appendEscaped(nil, []byte{'a', 'Z', '0', '-', '.', '_', '~', ' ', '%', 0, 0xff, '&'}))
	if want := "aZ0-._~%20%25%00%FF%26"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestTarget(t *testing.T) {
	tests := []struct {
		url, announce, scrape string
	}{
		{"http://h:1/announce", "http://h:1/announce?", "http://h:1/scrape?"},
		{"http://h:1/x/announce.php?passkey=a", "http://h:1/x/announce.php?passkey=a&", "http://h:1/x/scrape.php?passkey=a&"},
		{"https://h/announce/abc", "https://h/announce/abc?", "https://h/scrape/abc?"},
	}
	for _, tt := range tests {
		c := Default()
		tg, err := c.target(tt.url)
		if err != nil || tg.announce != tt.announce || tg.scrape != tt.scrape {
			t.Errorf("%s: %+v, %v; want %s and %s", tt.url, tg, err, tt.announce, tt.scrape)
		}
	}
	c := Default()
	c.ScrapeRatio = 0
	if _, err := c.target("http://h:1/a"); err != nil {
		t.Errorf("no /announce without scrapes: %v", err)
	}
}
