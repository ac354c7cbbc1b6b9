package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"net/netip"
	"reflect"
	"runtime"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// antiEntropyGoldenCases pin the anti-entropy messages in
// testdata/wire.golden beside the others.
func antiEntropyGoldenCases() []struct {
	name string
	enc  func() ([]byte, error)
} {
	return []struct {
		name string
		enc  func() ([]byte, error)
	}{
		{"digest empty", func() ([]byte, error) {
			return appendRequest(nil, &DigestRequest{From: "n1", View: 0xfedcba9876543210})
		}},
		{"compare", func() ([]byte, error) {
			return appendRequest(nil, &CompareRequest{From: "fra1-a", View: 7, Swarms: []SwarmDigest{
				{InfoHash: testInfoHash(0xd0), Digest: 0x1122334455667788},
			}})
		}},
		{"repair", func() ([]byte, error) {
			return appendRequest(nil, &RepairRequest{Swarms: []RepairSwarm{{InfoHash: testInfoHash(0xe0), Snatches: 300, Peers: []AgedPeer{
				{SwarmPeer: SwarmPeer{Peer: testPeer("192.0.2.9:6881", 0x40), Seeder: true}, Age: 1800},
			}}}})
		}},
		{"digest reply", func() ([]byte, error) {
			return appendReply(nil, &DigestReply{Ranges: []uint16{0, 300, DigestRanges - 1}})
		}},
		{"compare reply", func() ([]byte, error) {
			return appendReply(nil, &CompareReply{Want: []uint16{0, 1, MaxCompareSwarms - 1}})
		}},
	}
}

// TestWireDigestBytes pins a full DigestRequest, 32 KiB, by its layout
// rather than in the golden file: the header as "digest empty" has it,
// the count, then each digest in 8 big-endian bytes.
func TestWireDigestBytes(t *testing.T) {
	digests := make([]uint64, DigestRanges)
	digests[0], digests[1], digests[DigestRanges-1] = 0x0102030405060708, 1, math.MaxUint64
	b, err := appendRequest(nil, &DigestRequest{From: "n1", View: 0xfedcba9876543210, Digests: digests})
	if err != nil {
		t.Fatal(err)
	}
	head := []byte{kindDigest, 2, 'n', '1', 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0x80, 0x20}
	if !bytes.HasPrefix(b, head) || len(b) != len(head)+8*DigestRanges {
		t.Fatalf("starts %x and is %d bytes; want %x and %d", b[:min(len(b), 16)], len(b), head, len(head)+8*DigestRanges)
	}
	body := b[len(head):]
	if !bytes.Equal(body[:16], []byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1}) || !bytes.Equal(body[len(body)-8:], bytes.Repeat([]byte{0xff}, 8)) {
		t.Errorf("digests encoded as %x … %x", body[:16], body[len(body)-8:])
	}
}

func TestAntiEntropyRoundTrip(t *testing.T) {
	digests := make([]uint64, DigestRanges)
	for i := range digests {
		digests[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	var long []SwarmDigest
	for i := range MaxCompareSwarms {
		long = append(long, SwarmDigest{InfoHash: testInfoHash(byte(i)), Digest: uint64(i)})
	}
	aged := func(n int) []AgedPeer {
		var ps []AgedPeer
		for i, sp := range manySwarmPeers(n) {
			ps = append(ps, AgedPeer{SwarmPeer: sp, Age: uint32(i) * 977})
		}
		return ps
	}
	for _, tc := range []struct {
		name string
		msg  any
	}{
		{"digest", &DigestRequest{From: "n1", View: math.MaxUint64, Digests: digests}},
		{"digest no digests", &DigestRequest{}},
		{"compare", &CompareRequest{From: "a node with a long name", View: 1, Swarms: long}},
		{"compare none", &CompareRequest{From: "n"}},
		{"repair", &RepairRequest{Swarms: []RepairSwarm{
			{InfoHash: testInfoHash(1), Snatches: math.MaxUint32, Peers: aged(1000)},
			{InfoHash: testInfoHash(2)},
			{InfoHash: testInfoHash(3), Peers: []AgedPeer{{Age: math.MaxUint32, SwarmPeer: SwarmPeer{Peer: testPeer("[2001:db8::9]:1", 9)}}}},
		}}},
		{"repair none", &RepairRequest{}},
		{"digest reply", &DigestReply{Ranges: []uint16{0, 1, 4095}}},
		{"digest reply none", &DigestReply{}},
		{"compare reply", &CompareReply{Want: []uint16{5, MaxCompareSwarms - 1}}},
		{"compare reply none", &CompareReply{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b []byte
			var got any
			var err error
			switch m := tc.msg.(type) {
			case Request:
				if b, err = appendRequest(nil, m); err == nil {
					got, err = decodeRequest(b)
				}
			case Reply:
				if b, err = appendReply(nil, m); err == nil {
					got, err = decodeReply(b)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.msg) {
				t.Fatalf("decoded %T differs from what was encoded", got)
			}
		})
	}
}

func TestAntiEntropyEncodeRejects(t *testing.T) {
	zoned := bittorrent.Peer{Addr: netip.MustParseAddrPort("[fe80::1%eth0]:6881")}
	for _, tc := range []struct {
		name string
		req  Request
		rep  Reply
	}{
		{name: "typed nil digest", req: (*DigestRequest)(nil)},
		{name: "some digests", req: &DigestRequest{Digests: make([]uint64, 10)}},
		{name: "long name", req: &DigestRequest{From: string(make([]byte, maxMemberName+1))}},
		{name: "too many to compare", req: &CompareRequest{Swarms: make([]SwarmDigest, MaxCompareSwarms+1)}},
		{name: "zoned repair peer", req: &RepairRequest{Swarms: []RepairSwarm{{Peers: []AgedPeer{{SwarmPeer: SwarmPeer{Peer: zoned}}}}}}},
		{name: "range out of bounds", rep: &DigestReply{Ranges: []uint16{DigestRanges}}},
		{name: "index out of bounds", rep: &CompareReply{Want: []uint16{MaxCompareSwarms}}},
		{name: "typed nil compare reply", rep: (*CompareReply)(nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.req != nil {
				_, err = appendRequest(nil, tc.req)
			} else {
				_, err = appendReply(nil, tc.rep)
			}
			if err == nil {
				t.Fatal("encoded")
			}
		})
	}
}

func TestAntiEntropyDecodeGarbage(t *testing.T) {
	digest, _ := appendRequest(nil, &DigestRequest{From: "n1", View: 1, Digests: make([]uint64, DigestRanges)})
	repair, _ := appendRequest(nil, &RepairRequest{Swarms: []RepairSwarm{{InfoHash: testInfoHash(1), Peers: []AgedPeer{{SwarmPeer: SwarmPeer{Peer: testPeer("192.0.2.1:1", 1)}}}}}})
	for _, tc := range []struct {
		name  string
		b     []byte
		reply bool
	}{
		{name: "digest truncated", b: digest[:len(digest)-1]},
		{name: "digest trailing byte", b: append(bytes.Clone(digest), 0)},
		{name: "ten digests", b: append(binary.AppendUvarint([]byte{kindDigest, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 10), make([]byte, 80)...)},
		{name: "name too long", b: append(binary.AppendUvarint([]byte{kindDigest}, maxMemberName+1), make([]byte, maxMemberName+20)...)},
		{name: "too many to compare", b: append(binary.AppendUvarint([]byte{kindCompare, 0, 0, 0, 0, 0, 0, 0, 0, 0}, MaxCompareSwarms+1), make([]byte, 28*(MaxCompareSwarms+1))...)},
		{name: "repair seeder flag two", b: func() []byte { b := bytes.Clone(repair); b[1+1+20+1+1] = 2; return b }()},
		{name: "repair age over 32 bits", b: binary.AppendUvarint(append([]byte{kindRepair, 1}, make([]byte, 20+1+1+1)...), 1<<32)},
		{name: "repair truncated", b: repair[:len(repair)-3]},
		{name: "unknown kind", b: []byte{kindRepair + 1}},
		{name: "range too large", b: binary.AppendUvarint([]byte{kindDigestReply, 1}, DigestRanges), reply: true},
		{name: "index too large", b: binary.AppendUvarint([]byte{kindCompareReply, 1}, MaxCompareSwarms), reply: true},
		{name: "reply count beyond bytes", b: []byte{kindCompareReply, 3, 1}, reply: true},
		{name: "unknown reply kind", b: []byte{kindCompareReply + 1}, reply: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got any
			var err error
			if tc.reply {
				var rep Reply
				if rep, err = decodeReply(tc.b); rep != nil {
					got = rep
				}
			} else {
				var req Request
				if req, err = decodeRequest(tc.b); req != nil {
					got = req
				}
			}
			if err == nil || !errors.Is(err, errMalformed) || got != nil {
				t.Fatalf("got %v, %v; want a malformed error", got, err)
			}
		})
	}
}

// TestAntiEntropyAllocationBound holds the new decoders to the same bound
// as the others: a small multiple of their input.
func TestAntiEntropyAllocationBound(t *testing.T) {
	var aged []AgedPeer
	for _, sp := range manySwarmPeers(4096) {
		aged = append(aged, AgedPeer{SwarmPeer: sp, Age: 7})
	}
	repair, _ := appendRequest(nil, &RepairRequest{Swarms: []RepairSwarm{{Peers: aged}}})
	compare, _ := appendRequest(nil, &CompareRequest{Swarms: make([]SwarmDigest, 4096)})
	want := append(binary.AppendUvarint([]byte{kindCompareReply}, 4096), make([]byte, 4096)...)
	for _, tc := range []struct {
		name  string
		b     []byte
		reply bool
	}{{"repair", repair, false}, {"compare", compare, false}, {"compare reply", want, true}} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			const rounds = 10
			for range rounds {
				if tc.reply {
					_, _ = decodeReply(tc.b)
				} else {
					_, _ = decodeRequest(tc.b)
				}
			}
			runtime.ReadMemStats(&after)
			if perRound, limit := (after.TotalAlloc-before.TotalAlloc)/rounds, 3*uint64(len(tc.b))+1024; perRound > limit {
				t.Fatalf("decoding %d bytes allocated %d bytes; want at most %d", len(tc.b), perRound, limit)
			}
		})
	}
}
