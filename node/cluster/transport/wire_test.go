package transport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var updateWire = flag.Bool("update-wire", false, "rewrite testdata/wire.golden")

func testInfoHash(b byte) bittorrent.InfoHash {
	var ih bittorrent.InfoHash
	for i := range ih {
		ih[i] = b + byte(i)
	}
	return ih
}

func testPeerID(b byte) bittorrent.PeerID {
	var id bittorrent.PeerID
	for i := range id {
		id[i] = b ^ byte(i)
	}
	return id
}

func testPeer(addr string, id byte) bittorrent.Peer {
	return bittorrent.Peer{ID: testPeerID(id), Addr: netip.MustParseAddrPort(addr)}
}

// manyChanges returns n changes cycling through every operation and both
// address families.
func manyChanges(n int) []bittorrent.Change {
	ops := []bittorrent.ChangeOp{bittorrent.OpPut, bittorrent.OpRemove, bittorrent.OpComplete}
	cs := make([]bittorrent.Change, n)
	for i := range cs {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(i))
		if i%2 == 1 {
			addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}), uint16(i))
		}
		cs[i] = bittorrent.Change{
			InfoHash: testInfoHash(byte(i)),
			Peer:     bittorrent.Peer{ID: testPeerID(byte(i)), Addr: addr},
			Op:       ops[i%3],
			Seeder:   i%4 == 0,
		}
	}
	return cs
}

func manySwarmPeers(n int) []SwarmPeer {
	ps := make([]SwarmPeer, n)
	for i, c := range manyChanges(n) {
		ps[i] = SwarmPeer{Peer: c.Peer, Seeder: c.Seeder}
	}
	return ps
}

var allOnes = bittorrent.PeerID{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func TestRequestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  Request
		want Request // when decoding does not give back req exactly
	}{
		{name: "apply nil", req: &ApplyRequest{}},
		{name: "apply empty", req: &ApplyRequest{Changes: []bittorrent.Change{}}, want: &ApplyRequest{}},
		{name: "apply ipv4 put", req: &ApplyRequest{Changes: []bittorrent.Change{
			{InfoHash: testInfoHash(1), Peer: testPeer("192.0.2.1:6881", 1), Op: bittorrent.OpPut},
		}}},
		{name: "apply ipv6 remove and complete", req: &ApplyRequest{Changes: []bittorrent.Change{
			{InfoHash: testInfoHash(2), Peer: testPeer("[2001:db8::1]:51413", 2), Op: bittorrent.OpRemove},
			{InfoHash: testInfoHash(3), Peer: testPeer("[2001:db8::2]:1", 3), Op: bittorrent.OpComplete, Seeder: true},
		}}},
		{name: "apply ipv4-mapped ipv6 stays ipv6", req: &ApplyRequest{Changes: []bittorrent.Change{
			{InfoHash: testInfoHash(4), Peer: testPeer("[::ffff:192.0.2.9]:80", 4), Op: bittorrent.OpPut, Seeder: true},
		}}},
		{name: "apply extremes", req: &ApplyRequest{Changes: []bittorrent.Change{
			{InfoHash: bittorrent.InfoHash(allOnes), Peer: bittorrent.Peer{ID: allOnes, Addr: netip.MustParseAddrPort("255.255.255.255:65535")}, Op: bittorrent.OpComplete, Seeder: true},
			{Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort("0.0.0.0:0")}, Op: bittorrent.OpPut},
			{Peer: bittorrent.Peer{Addr: netip.AddrPortFrom(netip.Addr{}, 7)}, Op: bittorrent.OpRemove},
			{Op: bittorrent.OpPut},
		}}},
		{name: "apply 65536 changes", req: &ApplyRequest{Changes: manyChanges(65536)}},
		{name: "apply with a sequence", req: &ApplyRequest{Stream: 0xfedcba9876543210, Seq: 1 << 40, Changes: manyChanges(3)}},
		{name: "fetch", req: &FetchRequest{InfoHash: testInfoHash(9), MaxPeers: 200}},
		{name: "fetch zero", req: &FetchRequest{}},
		{name: "fetch negative", req: &FetchRequest{InfoHash: testInfoHash(9), MaxPeers: -1}},
		{name: "fetch max", req: &FetchRequest{MaxPeers: math.MaxInt}},
		{name: "fetch min", req: &FetchRequest{MaxPeers: math.MinInt}},
		{name: "fetch many nil", req: &FetchManyRequest{MaxPeers: 200}},
		{name: "fetch many empty", req: &FetchManyRequest{InfoHashes: []bittorrent.InfoHash{}}, want: &FetchManyRequest{}},
		{name: "fetch many", req: &FetchManyRequest{InfoHashes: []bittorrent.InfoHash{testInfoHash(1), testInfoHash(2), bittorrent.InfoHash(allOnes)}, MaxPeers: -1}},
		{name: "fetch many most", req: &FetchManyRequest{InfoHashes: make([]bittorrent.InfoHash, MaxFetchMany), MaxPeers: math.MaxInt}},
		{name: "scrape first page", req: &ScrapeRequest{Max: 8192}},
		{name: "signal nil", req: &SignalRequest{}},
		{name: "signal empty", req: &SignalRequest{Signals: []bittorrent.Signal{}}, want: &SignalRequest{}},
		{name: "signal offer and answer", req: testSignals()},
		{name: "signal longest offer id", req: &SignalRequest{Signals: []bittorrent.Signal{{
			Kind: bittorrent.SignalAnswer, OfferID: strings.Repeat("x", bittorrent.MaxOfferIDLen), SDP: []byte("{}"),
			From: bittorrent.WebRTCAddr(0xffffffff, 0xffffffff), To: bittorrent.WebRTCAddr(0, 0),
		}}}},
		{name: "scrape extremes", req: &ScrapeRequest{Cursor: math.MaxUint64, Max: math.MinInt}},
		{name: "merge nil", req: &MergeRequest{}},
		{name: "merge empty", req: &MergeRequest{Swarms: []Swarm{}}, want: &MergeRequest{}},
		{name: "merge swarm without peers", req: &MergeRequest{Swarms: []Swarm{{InfoHash: testInfoHash(5), Snatches: 3}}}},
		{name: "merge empty peer list", req: &MergeRequest{Swarms: []Swarm{{InfoHash: testInfoHash(5), Peers: []SwarmPeer{}}}},
			want: &MergeRequest{Swarms: []Swarm{{InfoHash: testInfoHash(5)}}}},
		{name: "merge mixed", req: &MergeRequest{Swarms: []Swarm{
			{InfoHash: testInfoHash(6), Snatches: math.MaxUint32, Peers: []SwarmPeer{
				{Peer: testPeer("198.51.100.7:6881", 7), Seeder: true},
				{Peer: testPeer("[2001:db8::7]:6881", 8)},
			}},
			{InfoHash: testInfoHash(7), Peers: manySwarmPeers(1000)},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := appendRequest([]byte("prefix"), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(b, []byte("prefix")) {
				t.Fatalf("appendRequest did not append: %x", b)
			}
			b = b[len("prefix"):]
			got, err := decodeRequest(b)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == nil {
				want = tc.req
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %s, want %s", fmt.Sprint(got)[:min(200, len(fmt.Sprint(got)))], fmt.Sprint(want)[:min(200, len(fmt.Sprint(want)))])
			}
			again, err := appendRequest(nil, got)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs (err %v)", err)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		rep  Reply
		want Reply
	}{
		{name: "ack", rep: &Ack{}},
		{name: "fetch reply zero", rep: &FetchReply{}},
		{name: "fetch reply empty peers", rep: &FetchReply{Counts: bittorrent.Counts{Seeders: 1}, Peers: []SwarmPeer{}},
			want: &FetchReply{Counts: bittorrent.Counts{Seeders: 1}}},
		{name: "fetch reply max counts", rep: &FetchReply{Counts: bittorrent.Counts{Seeders: math.MaxUint32, Leechers: math.MaxUint32, Snatches: math.MaxUint32}}},
		{name: "fetch reply peers", rep: &FetchReply{
			Counts: bittorrent.Counts{Seeders: 1, Leechers: 1, Snatches: 12},
			Peers: []SwarmPeer{
				{Peer: testPeer("203.0.113.5:6881", 1), Seeder: true},
				{Peer: testPeer("[2001:db8:ffff::5]:443", 2)},
			},
		}},
		{name: "fetch reply 10000 peers", rep: &FetchReply{Peers: manySwarmPeers(10000)}},
		{name: "fetch many reply nil", rep: &FetchManyReply{}},
		{name: "fetch many reply empty", rep: &FetchManyReply{Swarms: []FetchReply{}}, want: &FetchManyReply{}},
		{name: "fetch many reply", rep: &FetchManyReply{Swarms: []FetchReply{
			{},
			{Counts: bittorrent.Counts{Seeders: 1, Leechers: 1, Snatches: math.MaxUint32}, Peers: []SwarmPeer{
				{Peer: testPeer("203.0.113.5:6881", 1), Seeder: true},
				{Peer: testPeer("[2001:db8:ffff::5]:443", 2)},
			}},
			{Peers: manySwarmPeers(300)},
		}}},
		{name: "scrape reply done", rep: &ScrapeReply{Done: true}},
		{name: "scrape reply empty files", rep: &ScrapeReply{Next: 5, Files: []bittorrent.Scrape{}}, want: &ScrapeReply{Next: 5}},
		{name: "scrape reply files", rep: &ScrapeReply{Next: math.MaxUint64, Files: []bittorrent.Scrape{
			{InfoHash: testInfoHash(1), Counts: bittorrent.Counts{Seeders: 1, Leechers: 2, Snatches: 3}},
			{InfoHash: bittorrent.InfoHash(allOnes), Counts: bittorrent.Counts{Seeders: math.MaxUint32, Leechers: math.MaxUint32, Snatches: math.MaxUint32}},
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := appendReply(nil, tc.rep)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeReply(b)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == nil {
				want = tc.rep
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %v, want %v", got, want)
			}
		})
	}
}

func TestErrorReply(t *testing.T) {
	long := strings.Repeat("x", maxErrorLen+10)
	// "é" is two bytes; put one across the cut so it must not be split.
	straddle := strings.Repeat("x", maxErrorLen-1) + "é" + "tail"
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"empty", "", ""},
		{"short", "store: apply: boom", "store: apply: boom"},
		{"exactly max", long[:maxErrorLen], long[:maxErrorLen]},
		{"cut", long, long[:maxErrorLen]},
		{"cut on rune boundary", straddle, straddle[:maxErrorLen-1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := decodeReply(appendErrorReply(nil, tc.msg))
			var re RemoteError
			if rep != nil || !errors.As(err, &re) {
				t.Fatalf("got %v, %v; want a RemoteError", rep, err)
			}
			if string(re) != tc.want {
				t.Fatalf("message %q, want %q", re, tc.want)
			}
			if errors.Is(err, errMalformed) {
				t.Fatal("an error reply must not look malformed")
			}
		})
	}
}

func TestEncodeRejects(t *testing.T) {
	zoned := bittorrent.Peer{Addr: netip.MustParseAddrPort("[fe80::1%eth0]:6881")}
	for _, tc := range []struct {
		name  string
		req   Request
		reply bool // encode rep instead of req
		rep   Reply
	}{
		{name: "nil request"},
		{name: "typed nil apply", req: (*ApplyRequest)(nil)},
		{name: "typed nil fetch", req: (*FetchRequest)(nil)},
		{name: "typed nil merge", req: (*MergeRequest)(nil)},
		{name: "typed nil fetch many", req: (*FetchManyRequest)(nil)},
		{name: "too many in one fetch", req: &FetchManyRequest{InfoHashes: make([]bittorrent.InfoHash, MaxFetchMany+1)}},
		{name: "unknown op", req: &ApplyRequest{Changes: []bittorrent.Change{{Op: 0}}}},
		{name: "zoned address", req: &ApplyRequest{Changes: []bittorrent.Change{{Op: bittorrent.OpPut, Peer: zoned}}}},
		{name: "zoned swarm peer", req: &MergeRequest{Swarms: []Swarm{{Peers: []SwarmPeer{{Peer: zoned}}}}}},
		{name: "typed nil signal", req: (*SignalRequest)(nil)},
		{name: "unknown signal kind", req: &SignalRequest{Signals: []bittorrent.Signal{{Kind: 9}}}},
		{name: "offer id too long", req: &SignalRequest{Signals: []bittorrent.Signal{{Kind: bittorrent.SignalOffer, OfferID: strings.Repeat("x", bittorrent.MaxOfferIDLen+1)}}}},
		{name: "sdp too long", req: &SignalRequest{Signals: []bittorrent.Signal{{Kind: bittorrent.SignalOffer, SDP: make([]byte, MaxSignalSDP+1)}}}},
		{name: "zoned signal", req: &SignalRequest{Signals: []bittorrent.Signal{{Kind: bittorrent.SignalOffer, From: zoned.Addr}}}},
		{name: "nil reply", reply: true},
		{name: "typed nil ack", reply: true, rep: (*Ack)(nil)},
		{name: "typed nil fetch reply", reply: true, rep: (*FetchReply)(nil)},
		{name: "typed nil fetch many reply", reply: true, rep: (*FetchManyReply)(nil)},
		{name: "zoned peer in many", reply: true, rep: &FetchManyReply{Swarms: []FetchReply{{}, {Peers: []SwarmPeer{{Peer: zoned}}}}}},
		{name: "zoned reply peer", reply: true, rep: &FetchReply{Peers: []SwarmPeer{{Peer: zoned}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.reply {
				if _, err := appendReply(nil, tc.rep); err == nil {
					t.Fatal("appendReply succeeded")
				}
				return
			}
			if _, err := appendRequest(nil, tc.req); err == nil {
				t.Fatal("appendRequest succeeded")
			}
		})
	}
}

// goldenCases are the messages pinned byte for byte in testdata/wire.golden:
// changing their encoding breaks mixed-version clusters.
func goldenCases() []struct {
	name string
	enc  func() ([]byte, error)
} {
	return []struct {
		name string
		enc  func() ([]byte, error)
	}{
		{"fetch", func() ([]byte, error) {
			return appendRequest(nil, &FetchRequest{InfoHash: testInfoHash(1), MaxPeers: 50})
		}},
		{"apply", func() ([]byte, error) {
			return appendRequest(nil, &ApplyRequest{Stream: 0x0123456789abcdef, Seq: 300, Changes: []bittorrent.Change{
				{InfoHash: testInfoHash(0xa0), Peer: testPeer("192.0.2.1:6881", 0x10), Op: bittorrent.OpComplete, Seeder: true},
			}})
		}},
		{"merge", func() ([]byte, error) {
			return appendRequest(nil, &MergeRequest{Swarms: []Swarm{{InfoHash: testInfoHash(0xb0), Snatches: 300, Peers: []SwarmPeer{
				{Peer: testPeer("[2001:db8::1]:443", 0x20)},
			}}}})
		}},
		{"ack", func() ([]byte, error) { return appendReply(nil, &Ack{}) }},
		{"fetch reply", func() ([]byte, error) {
			return appendReply(nil, &FetchReply{Counts: bittorrent.Counts{Seeders: 1, Leechers: 2, Snatches: 3}, Peers: []SwarmPeer{
				{Peer: testPeer("198.51.100.2:1", 0x30), Seeder: true},
			}})
		}},
		{"error", func() ([]byte, error) { return appendErrorReply(nil, "boom"), nil }},
		{"scrape", func() ([]byte, error) { return appendRequest(nil, &ScrapeRequest{Cursor: 300, Max: 8192}) }},
		{"scrape reply", func() ([]byte, error) {
			return appendReply(nil, &ScrapeReply{Next: 7, Files: []bittorrent.Scrape{
				{InfoHash: testInfoHash(0xc0), Counts: bittorrent.Counts{Seeders: 300, Leechers: 2, Snatches: 1}},
			}})
		}},
		{"signal", func() ([]byte, error) { return appendRequest(nil, testSignals()) }},
		{"fetch many", func() ([]byte, error) {
			return appendRequest(nil, &FetchManyRequest{InfoHashes: []bittorrent.InfoHash{testInfoHash(1), testInfoHash(0xc0)}, MaxPeers: 200})
		}},
		{"fetch many reply", func() ([]byte, error) {
			return appendReply(nil, &FetchManyReply{Swarms: []FetchReply{
				{Counts: bittorrent.Counts{Seeders: 1, Leechers: 2, Snatches: 3}, Peers: []SwarmPeer{{Peer: testPeer("198.51.100.2:1", 0x30), Seeder: true}}},
				{},
			}})
		}},
	}
}

func TestWireGolden(t *testing.T) {
	path := filepath.Join("testdata", "wire.golden")
	var out strings.Builder
	out.WriteString("# Encodings of node-to-node messages (hex). Regenerate with go test -run TestWireGolden -update-wire.\n")
	got := map[string][]byte{}
	for _, c := range goldenCases() {
		b, err := c.enc()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got[c.name] = b
		fmt.Fprintf(&out, "%s: %x\n", c.name, b)
	}
	if *updateWire {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run with -update-wire to create it)", err)
	}
	defer f.Close()
	seen := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hx, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("bad golden line %q", line)
		}
		want, err := hex.DecodeString(hx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got[name], want) {
			t.Errorf("%s: encodes to\n%x\nwant\n%x", name, got[name], want)
		}
		seen++
		// The golden bytes must also decode to a message that re-encodes
		// to them.
		var again []byte
		if rep, err := decodeReply(want); err == nil {
			again, _ = appendReply(nil, rep)
		} else if re, ok := errors.AsType[RemoteError](err); ok {
			again = appendErrorReply(nil, string(re))
		} else if req, err := decodeRequest(want); err == nil {
			again, _ = appendRequest(nil, req)
		}
		if !bytes.Equal(again, want) {
			t.Errorf("%s: golden bytes do not decode and re-encode", name)
		}
	}
	if seen != len(got) {
		t.Errorf("golden file has %d messages, want %d", seen, len(got))
	}
}

// TestWireFetchBytes spells one small request out by hand, so the format
// description in wire.go stays true.
func TestWireFetchBytes(t *testing.T) {
	b, err := appendRequest(nil, &FetchRequest{InfoHash: testInfoHash(1), MaxPeers: -2})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 0x03}
	if !bytes.Equal(b, want) {
		t.Fatalf("got %x, want %x", b, want)
	}
}

func TestDecodeGarbage(t *testing.T) {
	apply, _ := appendRequest(nil, &ApplyRequest{Changes: []bittorrent.Change{
		{InfoHash: testInfoHash(1), Peer: testPeer("192.0.2.1:6881", 1), Op: bittorrent.OpPut},
	}})
	fetchReply, _ := appendReply(nil, &FetchReply{Peers: []SwarmPeer{{Peer: testPeer("[2001:db8::1]:1", 1)}}})
	with := func(b []byte, i int, v byte) []byte {
		b = bytes.Clone(b)
		b[i] = v
		return b
	}
	// Offsets into apply: kind, stream, seq, count, op, seeder, infohash
	// (20), family.
	const countAt, opAt, seederAt, familyAt = 3, 4, 5, 26
	requests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown kind", []byte{kindFetchMany + 1}},
		{"reply kind as request", []byte{kindAck}},
		{"trailing byte", append(bytes.Clone(apply), 0)},
		{"op zero", with(apply, opAt, 0)},
		{"op four", with(apply, opAt, 4)},
		{"seeder flag two", with(apply, seederAt, 2)},
		{"family five", with(apply, familyAt, 5)},
		{"count beyond bytes", with(apply, countAt, 2)},
		{"huge count", binary.AppendUvarint([]byte{kindApply, 0, 0}, 1<<62)},
		{"overlong stream", []byte{kindApply, 0x80, 0x00, 0, 0}},
		{"overlong count", []byte{kindApply, 0, 0, 0x80, 0x00}},
		{"varint overflow", []byte{kindFetch, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
			0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"snatches over 32 bits", binary.AppendUvarint(append([]byte{kindMerge, 1}, make([]byte, 20)...), 1<<32)},
		{"too many in one fetch", append(binary.AppendUvarint([]byte{kindFetchMany, 0}, MaxFetchMany+1), make([]byte, 20*(MaxFetchMany+1))...)},
		{"fetch many truncated", append([]byte{kindFetchMany, 0, 2}, make([]byte, 39)...)},
		{"fetch many trailing byte", append([]byte{kindFetchMany, 0, 1}, make([]byte, 21)...)},
	}
	for i := range len(apply) {
		requests = append(requests, struct {
			name string
			b    []byte
		}{fmt.Sprintf("apply truncated to %d", i), apply[:i]})
	}
	for _, tc := range requests {
		t.Run("request/"+tc.name, func(t *testing.T) {
			req, err := decodeRequest(tc.b)
			if err == nil || !errors.Is(err, errMalformed) || req != nil {
				t.Fatalf("got %v, %v; want a malformed error", req, err)
			}
		})
	}
	replies := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"request kind as reply", []byte{kindApply, 0}},
		{"ack with trailing byte", []byte{kindAck, 0}},
		{"counts over 32 bits", binary.AppendUvarint([]byte{kindFetchReply}, 1<<32)},
		{"many reply count beyond bytes", []byte{kindManyReply, 2, 0, 0, 0, 0}},
		{"many reply truncated", []byte{kindManyReply, 1, 0, 0, 0}},
		{"unknown kind", []byte{kindManyReply + 1}},
		{"error too long", append(binary.AppendUvarint([]byte{kindError}, maxErrorLen+1), make([]byte, maxErrorLen+1)...)},
		{"error truncated", []byte{kindError, 5, 'b', 'o'}},
	}
	for i := range len(fetchReply) {
		replies = append(replies, struct {
			name string
			b    []byte
		}{fmt.Sprintf("fetch reply truncated to %d", i), fetchReply[:i]})
	}
	for _, tc := range replies {
		t.Run("reply/"+tc.name, func(t *testing.T) {
			rep, err := decodeReply(tc.b)
			if err == nil || !errors.Is(err, errMalformed) || rep != nil {
				t.Fatalf("got %v, %v; want a malformed error", rep, err)
			}
		})
	}
}

// TestDecodeDoesNotAlias checks that decoded values own their memory:
// transports reuse their read buffers.
func TestDecodeDoesNotAlias(t *testing.T) {
	in := &FetchReply{Peers: []SwarmPeer{{Peer: testPeer("192.0.2.1:1", 1)}}}
	b, _ := appendReply(nil, in)
	rep, err := decodeReply(b)
	if err != nil {
		t.Fatal(err)
	}
	clear(b)
	if !reflect.DeepEqual(rep, in) {
		t.Fatal("decoded reply changed when its input was overwritten")
	}
	eb := appendErrorReply(nil, "boom")
	_, err = decodeReply(eb)
	clear(eb)
	if err.Error() != RemoteError("boom").Error() {
		t.Fatalf("error reply changed when its input was overwritten: %v", err)
	}
}

// TestDecodeAllocationBound checks that decoding allocates at most a small
// multiple of its input, whatever the lengths inside claim.
func TestDecodeAllocationBound(t *testing.T) {
	valid, _ := appendRequest(nil, &ApplyRequest{Changes: manyChanges(4096)})
	merge, _ := appendRequest(nil, &MergeRequest{Swarms: []Swarm{{Peers: manySwarmPeers(4096)}}})
	forged := binary.AppendUvarint([]byte{kindApply}, 1<<40)
	forged = append(forged, make([]byte, 4096)...)
	for _, tc := range []struct {
		name string
		b    []byte
	}{{"valid apply", valid}, {"valid merge", merge}, {"forged count", forged}} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			const rounds = 10
			for range rounds {
				_, _ = decodeRequest(tc.b)
			}
			runtime.ReadMemStats(&after)
			perRound := (after.TotalAlloc - before.TotalAlloc) / rounds
			// A Change is 76 bytes in memory and at least 45 on the wire.
			if limit := 3*uint64(len(tc.b)) + 1024; perRound > limit {
				t.Fatalf("decoding %d bytes allocated %d bytes; want at most %d", len(tc.b), perRound, limit)
			}
		})
	}
}

// testSignals is an offer and its answer between sockets on two nodes.
func testSignals() *SignalRequest {
	return &SignalRequest{Signals: []bittorrent.Signal{
		{
			Kind: bittorrent.SignalOffer, InfoHash: testInfoHash(0xd0),
			From: bittorrent.WebRTCAddr(1, 2), FromID: bittorrent.PeerID{0x41}, To: bittorrent.WebRTCAddr(3, 4), ToID: bittorrent.PeerID{0x42},
			OfferID: "offer\x00\xff", SDP: []byte(`{"type":"offer","sdp":"v=0"}`),
		},
		{
			Kind: bittorrent.SignalAnswer, InfoHash: testInfoHash(0xd0),
			From: bittorrent.WebRTCAddr(3, 4), FromID: bittorrent.PeerID{0x42}, To: bittorrent.WebRTCAddr(1, 2), ToID: bittorrent.PeerID{0x41},
			OfferID: "offer\x00\xff", SDP: []byte(`{"type":"answer","sdp":"v=0"}`),
		},
	}}
}
