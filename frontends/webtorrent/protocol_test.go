package webtorrent

import (
	"encoding/json"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Every value the frontend writes decodes back, as a client's JSON parser
// sees it, to what it stands for.
func TestEncodingRoundTrips(t *testing.T) {
	var raw [256]byte
	for i := range raw {
		raw[i] = byte(i)
	}
	var s string
	if err := json.Unmarshal(appendBinary(nil, raw[:]), &s); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, 256)
	if !decodeBinary(s, back) || string(back) != string(raw[:]) {
		t.Errorf("binary string does not round-trip")
	}
	for _, id := range []string{"plain", "quote\"back\\slash", "ctl\x01\n", "é\u00ff\u0100☃", "\u0000"} {
		var got string
		if err := json.Unmarshal(appendString(nil, id), &got); err != nil || got != id {
			t.Errorf("offer id %q came back as %q (%v)", id, got, err)
		}
	}
	sig := bittorrent.Signal{Kind: bittorrent.SignalAnswer, OfferID: "\u00e9x", SDP: []byte(`{"type":"answer","sdp":"v=0"}`)}
	var m map[string]any
	if err := json.Unmarshal(signalMessage(&sig), &m); err != nil {
		t.Fatal(err)
	}
	if m["offer_id"] != "\u00e9x" || m["answer"].(map[string]any)["sdp"] != "v=0" {
		t.Errorf("signal message decodes to %v", m)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"bbbbbbbbbbbbbbbbbbbb","offers":[{"offer_id":"x","offer":{"sdp":"v"}}]}`))
	f.Add([]byte(`{"action":"scrape","info_hash":["aaaaaaaaaaaaaaaaaaaa"]}`))
	f.Add([]byte(`{"action":"announce","answer":{},"to_peer_id":"\u00ff","offer_id":"o"}`))
	f.Add([]byte(`{"numwant":1e400,"left":-1}`))
	f.Fuzz(func(_ *testing.T, b []byte) {
		var r request
		if decodeRequest(b, &r) != nil {
			return
		}
		// Whatever decoded must parse or fail cleanly, never panic.
		_, _ = parseInfoHash(r.InfoHash)
		_, _ = parsePeerID(r.PeerID)
		_, _ = parseEvent(r.Event)
		_, _ = parseScrapeHashes(r.InfoHash, 10, nil)
		_ = count(r.Left, 1)
		_ = count(r.NumWant, 0)
	})
}
