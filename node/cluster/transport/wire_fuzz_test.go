package transport

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to both decoders. Neither may panic,
// and whatever decodes must encode back to exactly the input: the format
// has one encoding per value, so a second reading of the same bytes
// (a different node, a newer version) cannot disagree.
func FuzzDecode(f *testing.F) {
	for _, c := range goldenCases() {
		b, err := c.enc()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, req := range []Request{
		&ApplyRequest{Changes: manyChanges(7)},
		&MergeRequest{Swarms: []Swarm{{InfoHash: testInfoHash(1), Snatches: 1 << 31, Peers: manySwarmPeers(3)}, {}}},
		&FetchRequest{MaxPeers: -1 << 40},
	} {
		b, err := appendRequest(nil, req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{kindApply, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{kindError, 0x80, 0x00})
	f.Add(append([]byte{kindFetchReply, 0, 0, 0, 1, 0, 0, 0}, make([]byte, 20)...))

	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		if req, err := decodeRequest(b); err == nil {
			again, err := appendRequest(nil, req)
			if err != nil {
				t.Fatalf("decoded request does not encode: %v", err)
			}
			if !bytes.Equal(again, in) {
				t.Fatalf("request re-encodes to %x, want %x", again, in)
			}
		} else if req != nil || !errors.Is(err, errMalformed) {
			t.Fatalf("failed decode returned %v, %v", req, err)
		}

		rep, err := decodeReply(b)
		var again []byte
		switch re, remote := errors.AsType[RemoteError](err); {
		case err == nil:
			if again, err = appendReply(nil, rep); err != nil {
				t.Fatalf("decoded reply does not encode: %v", err)
			}
		case remote:
			again = appendErrorReply(nil, string(re))
		case rep != nil || !errors.Is(err, errMalformed):
			t.Fatalf("failed decode returned %v, %v", rep, err)
		default:
			again = in
		}
		if !bytes.Equal(again, in) {
			t.Fatalf("reply re-encodes to %x, want %x", again, in)
		}
		if !bytes.Equal(b, in) {
			t.Fatal("decoding modified its input")
		}
	})
}
