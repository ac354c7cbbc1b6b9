package webtorrent

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// jsonRequest decodes msg the way encoding/json would, the reference the
// scanner is checked against.
func jsonRequest(msg []byte, r *request) error {
	*r = request{}
	if t := bytes.TrimLeft(msg, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errNotObject
	}
	return json.Unmarshal(msg, r)
}

// caseAmbiguous reports whether msg has a key encoding/json would match to
// a field case-insensitively: the scanner matches keys exactly, as every
// WebTorrent client sends them.
func caseAmbiguous(msg []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(msg, &m) != nil {
		return true
	}
	known := []string{"action", "info_hash", "peer_id", "numwant", "uploaded", "downloaded", "left", "event", "offers", "answer", "to_peer_id", "offer_id"}
	for k, v := range m {
		for _, f := range known {
			if k != f && strings.EqualFold(k, f) {
				return true
			}
		}
		if k == "offers" { // and keys inside the offers
			var offers []map[string]json.RawMessage
			if json.Unmarshal(v, &offers) == nil {
				for _, o := range offers {
					for ok := range o {
						if (ok != "offer_id" && strings.EqualFold(ok, "offer_id")) || (ok != "offer" && strings.EqualFold(ok, "offer")) {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

var scanCases = []string{
	`{"action":"announce","info_hash":"\u0000\u00ffabcdefghijklmnopqr","peer_id":"-WW0001-aaaaaaaaaaaa","numwant":10,"uploaded":0,"downloaded":1.5e3,"left":null,"event":"started","offers":[{"offer_id":"\u00e9x","offer":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}},null,{"offer":[1,{"a":true}]}]}`,
	`{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"bbbbbbbbbbbbbbbbbbbb","to_peer_id":"cccccccccccccccccccc","offer_id":"o1","answer":{"type":"answer","sdp":"v=0"}}`,
	`{"action":"scrape","info_hash":["aaaaaaaaaaaaaaaaaaaa","bbbbbbbbbbbbbbbbbbbb"]}`,
	`{"action":"scrape"}`,
	` { "action" : "announce" , "x" : [ ] , "y" : { } , "z" : -0.5e-3 , "answer" : null } `,
	`{"action":"a","action":"b"}`,
	`{"s":"\ud83d\ude00 \ud800 \ud800\u0041 \udc00\ud800\udc00 \"\\\/\b\f\n\r\t"}`,
	`{"action":"\ud83d\ude00\ud800"}`,
	`{}`, `{"a":1}x`, `{"a":01}`, `{"a":1.}`, `{"a":1e}`, `{"a":"\x"}`, `{"a":"\u12"}`, `{"a":tru}`, `{"a":[1,]}`, `{"a":{"b"}}`,
	`{"a":"` + "\x01" + `"}`, `{"numwant":1e400}`, `{"offers":{}}`, `{"offers":[5]}`, `{"action":5}`, `[1]`, ``, `{`, `{"a":{"b":{"c":[[[[1]]]]}}}`,
}

func TestScannerMatchesEncodingJSON(t *testing.T) {
	for _, c := range scanCases {
		compareDecoders(t, []byte(c))
	}
}

func compareDecoders(t *testing.T, msg []byte) {
	t.Helper()
	var got, want request
	gerr := scanRequest(msg, &got)
	werr := jsonRequest(msg, &want)
	if gerr == nil && !json.Valid(msg) {
		t.Fatalf("%q: the scanner accepts invalid JSON", msg)
	}
	if (gerr == nil) != (werr == nil) {
		if werr != nil && caseAmbiguous(msg) {
			return
		}
		// Nesting deeper than maxDepth is refused by the scanner only.
		if gerr != nil && bytes.Count(msg, []byte("["))+bytes.Count(msg, []byte("{")) > maxDepth {
			return
		}
		t.Fatalf("%q: scanner error %v, encoding/json error %v", msg, gerr, werr)
	}
	if gerr != nil || caseAmbiguous(msg) {
		return
	}
	// RawMessage values compare as bytes; encoding/json keeps them
	// verbatim, as the scanner does.
	if !reflect.DeepEqual(normal(got), normal(want)) {
		t.Fatalf("%q:\nscanner       %+v\nencoding/json %+v", msg, got, want)
	}
}

// normal makes empty and nil slices compare equal.
func normal(r request) request {
	if len(r.Offers) == 0 {
		r.Offers = nil
	}
	for i := range r.Offers {
		if len(r.Offers[i].Offer) == 0 {
			r.Offers[i].Offer = nil
		}
	}
	if len(r.InfoHash) == 0 {
		r.InfoHash = nil
	}
	if len(r.Answer) == 0 {
		r.Answer = nil
	}
	return r
}

func FuzzScanner(f *testing.F) {
	for _, c := range scanCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if !utf8.Valid(msg) {
			return // decodeRequest refuses it before scanning
		}
		compareDecoders(t, msg)
	})
}
