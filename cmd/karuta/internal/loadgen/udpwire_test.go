package loadgen

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// unhex decodes hex written with any spacing.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEncode(t *testing.T) {
	a := announce{
		left: 1000, event: eventStarted, key: 0xabcdef01, numWant: -1, port: 6881,
	}
	for i := range 20 {
		a.infoHash[i] = 0xa0 + byte(i)
		a.peerID[i] = 'A' + byte(i)
	}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"connect", appendConnect(nil, 0x01020304), `
			00 00 04 17 27 10 19 80  00 00 00 00  01 02 03 04`},
		{"announce", appendAnnounce(nil, 0xf10014ee45c0223c, 0x01020304, &a), `
			f1 00 14 ee 45 c0 22 3c  00 00 00 01  01 02 03 04
			a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af b0 b1 b2 b3
			41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50 51 52 53 54
			00 00 00 00 00 00 00 00  00 00 00 00 00 00 03 e8  00 00 00 00 00 00 00 00
			00 00 00 02  00 00 00 00  ab cd ef 01  ff ff ff ff  1a e1`},
		{"scrape of two", appendScrape(nil, 7, 9, [][20]byte{a.infoHash, {19: 1}}), `
			00 00 00 00 00 00 00 07  00 00 00 02  00 00 00 09
			a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af b0 b1 b2 b3
			00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if want := unhex(t, tt.want); !bytes.Equal(tt.got, want) {
				t.Errorf("got\n% x\nwant\n% x", tt.got, want)
			}
		})
	}
	if n := len(appendAnnounce(nil, 0, 0, &a)); n != announceLen {
		t.Errorf("announce is %d bytes, want %d", n, announceLen)
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want uint32
		v6   bool
		out  udpReply
		err  error
	}{
		{name: "connect", in: "00000000 01020304 f10014ee45c0223c", want: actionConnect,
			out: udpReply{action: actionConnect, tx: 0x01020304, connID: 0xf10014ee45c0223c}},
		// The reply of frontends/udp/testdata/announce_v4.hex.
		{name: "announce v4", want: actionAnnounce, in: `
			00 00 00 01 01 02 03 04 00 00 07 08 00 00 00 07
			00 00 00 05 0a 00 00 00 17 70 0a 00 00 01 17 71
			0a 00 00 02 17 72`,
			out: udpReply{action: actionAnnounce, tx: 0x01020304, interval: 1800, leechers: 7, seeders: 5, entries: 3}},
		{name: "announce v6 no peers", want: actionAnnounce, v6: true, in: "00000001 00000002 00000708 00000000 00000001",
			out: udpReply{action: actionAnnounce, tx: 2, interval: 1800, seeders: 1}},
		{name: "scrape", want: actionScrape, in: "00000002 00000009 00000001 00000002 00000003 00000004 00000005 00000006",
			out: udpReply{action: actionScrape, tx: 9, entries: 2}},
		{name: "error", want: actionAnnounce, in: "00000003 00000005" + hex.EncodeToString([]byte("connection ID expired or invalid")),
			out: udpReply{action: actionError, tx: 5, msg: "connection ID expired or invalid"}},
		{name: "short", want: actionConnect, in: "000000", err: errMalformed},
		{name: "wrong action", want: actionAnnounce, in: "00000000 00000001 0000000000000001",
			out: udpReply{action: actionConnect, tx: 1}, err: errMalformed},
		{name: "connect too long", want: actionConnect, in: "00000000 00000001 0000000000000001 00",
			out: udpReply{action: actionConnect, tx: 1}, err: errMalformed},
		{name: "announce with half a peer", want: actionAnnounce, in: "00000001 00000002 00000708 00000000 00000001 0a000000",
			out: udpReply{action: actionAnnounce, tx: 2}, err: errMalformed},
		{name: "scrape with a partial entry", want: actionScrape, in: "00000002 00000009 00000001",
			out: udpReply{action: actionScrape, tx: 9}, err: errMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseReply(unhex(t, tt.in), tt.want, tt.v6)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if got != tt.out {
				t.Errorf("got %+v, want %+v", got, tt.out)
			}
		})
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(1), false)
	f.Add([]byte{0, 0, 0, 3, 0, 0, 0, 2, 'x'}, uint8(2), true)
	f.Fuzz(func(t *testing.T, b []byte, want uint8, v6 bool) {
		r, err := parseReply(b, uint32(want%3), v6)
		if err == nil && r.action != uint32(want%3) && r.action != actionError {
			t.Errorf("accepted action %d for a request of action %d", r.action, want%3)
		}
	})
}
