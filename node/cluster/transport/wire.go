package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"unicode/utf8"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// The wire format of requests and replies, as carried inside a transport
// frame. A message is a kind byte followed by its fields:
//
//	ApplyRequest      0x01 stream:uvarint seq:uvarint count:uvarint change*count
//	FetchRequest      0x02 infohash:20 maxpeers:varint
//	MergeRequest      0x03 count:uvarint swarm*count
//	ScrapeRequest     0x04 cursor:uvarint max:varint
//	FetchManyRequest  0x05 maxpeers:varint count:uvarint infohash:20*count (count ≤ MaxFetchMany)
//	SignalRequest     0x30 count:uvarint signal*count (see signal.go)
//	Ack               0x81
//	FetchReply        0x82 fetched
//	error reply       0x83 len:uvarint message:len
//	ScrapeReply       0x84 done:1 next:uvarint count:uvarint file*count
//	FetchManyReply    0x85 count:uvarint fetched*count
//
//	fetched   seeders:uvarint leechers:uvarint snatches:uvarint count:uvarint swarmpeer*count
//	change    op:1 seeder:1 infohash:20 peer
//	swarm     infohash:20 snatches:uvarint count:uvarint swarmpeer*count
//	swarmpeer seeder:1 peer
//	file      infohash:20 seeders:uvarint leechers:uvarint snatches:uvarint
//	peer      family:1 (0: no address, 4: 4 bytes, 6: 16 bytes) addr port:2 (big endian) id:20
//
// Varints are encoding/binary's. Every value has exactly one encoding:
// the decoder rejects overlong varints, flags other than 0 and 1, unknown
// kinds, operations and families, and trailing bytes, so decode followed
// by encode gives back the input. Decoded values never alias the input.
const (
	kindApply       byte = 0x01
	kindFetch       byte = 0x02
	kindMerge       byte = 0x03
	kindScrape      byte = 0x04
	kindFetchMany   byte = 0x05
	kindSignal      byte = 0x30
	kindAck         byte = 0x81
	kindFetchReply  byte = 0x82
	kindError       byte = 0x83
	kindScrapeReply byte = 0x84
	kindManyReply   byte = 0x85
)

// Address families of an encoded peer.
const (
	familyNone byte = 0 // the zero netip.Addr; only the port is kept
	family4    byte = 4
	family6    byte = 6
)

// Smallest encodings of the list elements, which bound how many elements
// a count may claim in a given number of bytes, and so what decoding may
// allocate.
const (
	minPeerSize      = 1 + 2 + 20
	minSwarmPeerSize = 1 + minPeerSize
	minChangeSize    = 1 + 1 + 20 + minPeerSize
	minSwarmSize     = 20 + 1 + 1
	minFetchedSize   = 1 + 1 + 1 + 1
	minFileSize      = 20 + 1 + 1 + 1
)

// maxErrorLen bounds the message of an error reply; longer messages are
// cut (on a UTF-8 boundary) when encoded.
const maxErrorLen = 1024

// errMalformed is wrapped by every decoding error.
var errMalformed = errors.New("malformed message")

// RemoteError is the error a node's handler answered a request with, as
// its text. Call returns it (wrapped with the address) so callers can tell
// a node that answered with an error from one that could not be reached
// (ErrUnreachable).
type RemoteError string

func (e RemoteError) Error() string { return "remote error: " + string(e) }

// appendRequest appends the encoding of req to dst.
func appendRequest(dst []byte, req Request) ([]byte, error) {
	var err error
	switch r := req.(type) {
	case *ApplyRequest:
		if r == nil {
			break
		}
		dst = append(dst, kindApply)
		dst = binary.AppendUvarint(dst, r.Stream)
		dst = binary.AppendUvarint(dst, r.Seq)
		dst = binary.AppendUvarint(dst, uint64(len(r.Changes)))
		for i := range r.Changes {
			if dst, err = appendChange(dst, &r.Changes[i]); err != nil {
				return dst, fmt.Errorf("encode change %d: %w", i, err)
			}
		}
		return dst, nil
	case *FetchRequest:
		if r == nil {
			break
		}
		dst = append(dst, kindFetch)
		dst = append(dst, r.InfoHash[:]...)
		return binary.AppendVarint(dst, int64(r.MaxPeers)), nil
	case *FetchManyRequest:
		if r == nil {
			break
		}
		if len(r.InfoHashes) > MaxFetchMany {
			return dst, fmt.Errorf("encode request: %d infohashes in one fetch; at most %d", len(r.InfoHashes), MaxFetchMany)
		}
		dst = append(dst, kindFetchMany)
		dst = binary.AppendVarint(dst, int64(r.MaxPeers))
		dst = binary.AppendUvarint(dst, uint64(len(r.InfoHashes)))
		for i := range r.InfoHashes {
			dst = append(dst, r.InfoHashes[i][:]...)
		}
		return dst, nil
	case *MergeRequest:
		if r == nil {
			break
		}
		dst = append(dst, kindMerge)
		dst = binary.AppendUvarint(dst, uint64(len(r.Swarms)))
		for i := range r.Swarms {
			sw := &r.Swarms[i]
			dst = append(dst, sw.InfoHash[:]...)
			dst = binary.AppendUvarint(dst, uint64(sw.Snatches))
			if dst, err = appendSwarmPeers(dst, sw.Peers); err != nil {
				return dst, fmt.Errorf("encode swarm %d: %w", i, err)
			}
		}
		return dst, nil
	case *SignalRequest:
		if r == nil {
			break
		}
		return appendSignalRequest(dst, r)
	case *ScrapeRequest:
		if r == nil {
			break
		}
		dst = append(dst, kindScrape)
		dst = binary.AppendUvarint(dst, r.Cursor)
		return binary.AppendVarint(dst, int64(r.Max)), nil
	}
	return dst, fmt.Errorf("encode request: unsupported value %T", req)
}

// appendReply appends the encoding of rep to dst. Handler errors travel
// as error replies instead; see appendErrorReply.
func appendReply(dst []byte, rep Reply) ([]byte, error) {
	switch r := rep.(type) {
	case *Ack:
		if r == nil {
			break
		}
		return append(dst, kindAck), nil
	case *FetchReply:
		if r == nil {
			break
		}
		dst, err := appendFetched(append(dst, kindFetchReply), r)
		if err != nil {
			return dst, fmt.Errorf("encode fetch reply: %w", err)
		}
		return dst, nil
	case *FetchManyReply:
		if r == nil {
			break
		}
		dst = append(dst, kindManyReply)
		dst = binary.AppendUvarint(dst, uint64(len(r.Swarms)))
		var err error
		for i := range r.Swarms {
			if dst, err = appendFetched(dst, &r.Swarms[i]); err != nil {
				return dst, fmt.Errorf("encode fetch reply %d: %w", i, err)
			}
		}
		return dst, nil
	case *ScrapeReply:
		if r == nil {
			break
		}
		dst = append(dst, kindScrapeReply, boolByte(r.Done))
		dst = binary.AppendUvarint(dst, r.Next)
		dst = binary.AppendUvarint(dst, uint64(len(r.Files)))
		for i := range r.Files {
			f := &r.Files[i]
			dst = append(dst, f.InfoHash[:]...)
			dst = binary.AppendUvarint(dst, uint64(f.Seeders))
			dst = binary.AppendUvarint(dst, uint64(f.Leechers))
			dst = binary.AppendUvarint(dst, uint64(f.Snatches))
		}
		return dst, nil
	}
	return dst, fmt.Errorf("encode reply: unsupported value %T", rep)
}

// appendErrorReply appends an error reply carrying msg, cut to
// maxErrorLen bytes.
func appendErrorReply(dst []byte, msg string) []byte {
	if len(msg) > maxErrorLen {
		n := maxErrorLen
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n]
	}
	dst = append(dst, kindError)
	dst = binary.AppendUvarint(dst, uint64(len(msg)))
	return append(dst, msg...)
}

// appendFetched appends a FetchReply's fields, without its kind.
func appendFetched(dst []byte, r *FetchReply) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(r.Counts.Seeders))
	dst = binary.AppendUvarint(dst, uint64(r.Counts.Leechers))
	dst = binary.AppendUvarint(dst, uint64(r.Counts.Snatches))
	return appendSwarmPeers(dst, r.Peers)
}

func appendSwarmPeers(dst []byte, ps []SwarmPeer) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(ps)))
	var err error
	for i := range ps {
		dst = append(dst, boolByte(ps[i].Seeder))
		if dst, err = appendPeer(dst, &ps[i].Peer); err != nil {
			return dst, fmt.Errorf("peer %d: %w", i, err)
		}
	}
	return dst, nil
}

func appendChange(dst []byte, c *bittorrent.Change) ([]byte, error) {
	switch c.Op {
	case bittorrent.OpPut, bittorrent.OpRemove, bittorrent.OpComplete:
	default:
		return dst, fmt.Errorf("unknown operation %d", c.Op)
	}
	dst = append(dst, byte(c.Op), boolByte(c.Seeder))
	dst = append(dst, c.InfoHash[:]...)
	return appendPeer(dst, &c.Peer)
}

func appendPeer(dst []byte, p *bittorrent.Peer) ([]byte, error) {
	ip := p.Addr.Addr()
	switch {
	case !ip.IsValid():
		dst = append(dst, familyNone)
	case ip.Zone() != "":
		// A zone only means something on the host that saw it.
		return dst, fmt.Errorf("address %s has a zone", ip)
	case ip.Is4():
		a := ip.As4()
		dst = append(dst, family4)
		dst = append(dst, a[:]...)
	default:
		a := ip.As16()
		dst = append(dst, family6)
		dst = append(dst, a[:]...)
	}
	dst = binary.BigEndian.AppendUint16(dst, p.Addr.Port())
	return append(dst, p.ID[:]...), nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// decodeRequest decodes a whole request.
func decodeRequest(b []byte) (Request, error) {
	d := decoder{b: b}
	var req Request
	switch kind := d.u8(); kind {
	case kindApply:
		r := &ApplyRequest{Stream: d.uvarint(), Seq: d.uvarint()}
		n := d.count(minChangeSize)
		if n > 0 {
			r.Changes = make([]bittorrent.Change, n)
			for i := range r.Changes {
				d.change(&r.Changes[i])
			}
		}
		req = r
	case kindFetch:
		r := &FetchRequest{}
		d.read(r.InfoHash[:])
		v := d.varint()
		if v < math.MinInt || v > math.MaxInt {
			d.fail("max peers out of range")
		}
		r.MaxPeers = int(v)
		req = r
	case kindFetchMany:
		r := &FetchManyRequest{}
		v := d.varint()
		if v < math.MinInt || v > math.MaxInt {
			d.fail("max peers out of range")
		}
		r.MaxPeers = int(v)
		n := d.count(len(bittorrent.InfoHash{}))
		if n > MaxFetchMany {
			d.fail(fmt.Sprintf("%d infohashes in one fetch; at most %d", n, MaxFetchMany))
		}
		if n > 0 && d.err == nil {
			r.InfoHashes = make([]bittorrent.InfoHash, n)
			for i := range r.InfoHashes {
				d.read(r.InfoHashes[i][:])
			}
		}
		req = r
	case kindMerge:
		n := d.count(minSwarmSize)
		r := &MergeRequest{}
		if n > 0 {
			r.Swarms = make([]Swarm, n)
			for i := range r.Swarms {
				sw := &r.Swarms[i]
				d.read(sw.InfoHash[:])
				sw.Snatches = d.uint32()
				sw.Peers = d.swarmPeers()
			}
		}
		req = r
	case kindSignal:
		req = d.signalRequest()
	case kindScrape:
		r := &ScrapeRequest{Cursor: d.uvarint()}
		v := d.varint()
		if v < math.MinInt || v > math.MaxInt {
			d.fail("max out of range")
		}
		r.Max = int(v)
		req = r
	default:
		d.fail(fmt.Sprintf("unknown request kind 0x%02x", kind))
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return req, nil
}

// decodeReply decodes a whole reply. An error reply decodes to a nil
// Reply and a RemoteError; any other error wraps errMalformed.
func decodeReply(b []byte) (Reply, error) {
	d := decoder{b: b}
	var rep Reply
	var remote RemoteError
	switch kind := d.u8(); kind {
	case kindAck:
		rep = &Ack{}
	case kindFetchReply:
		r := &FetchReply{}
		d.fetched(r)
		rep = r
	case kindManyReply:
		n := d.count(minFetchedSize)
		r := &FetchManyReply{}
		if n > 0 {
			r.Swarms = make([]FetchReply, n)
			for i := range r.Swarms {
				d.fetched(&r.Swarms[i])
			}
		}
		rep = r
	case kindScrapeReply:
		r := &ScrapeReply{Done: d.flag(), Next: d.uvarint()}
		if n := d.count(minFileSize); n > 0 {
			r.Files = make([]bittorrent.Scrape, n)
			for i := range r.Files {
				f := &r.Files[i]
				d.read(f.InfoHash[:])
				f.Seeders, f.Leechers, f.Snatches = d.uint32(), d.uint32(), d.uint32()
			}
		}
		rep = r
	case kindError:
		n := d.count(1)
		if n > maxErrorLen {
			d.fail("error message too long")
		}
		remote = RemoteError(d.bytes(n))
	default:
		d.fail(fmt.Sprintf("unknown reply kind 0x%02x", kind))
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	if rep == nil {
		return nil, remote
	}
	return rep, nil
}

// decoder reads a message front to back. The first error sticks: later
// reads return zero values, so decoding code checks once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errMalformed, what)
	}
	d.b = nil
}

// finish reports the first error, or trailing bytes.
func (d *decoder) finish() error {
	if d.err == nil && len(d.b) > 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	return d.err
}

func (d *decoder) bytes(n int) []byte {
	if len(d.b) < n {
		d.fail("truncated")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) read(dst []byte) { copy(dst, d.bytes(len(dst))) }

func (d *decoder) u8() byte {
	if p := d.bytes(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) flag() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("flag is neither 0 nor 1")
	return false
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	switch {
	case n <= 0:
		d.fail("bad varint")
		return 0
	case n > 1 && d.b[n-1] == 0:
		// A zero final byte adds nothing: an overlong encoding.
		d.fail("overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > math.MaxUint32 {
		d.fail("count exceeds 32 bits")
		return 0
	}
	return uint32(v)
}

// count reads a list length and checks that the bytes left can hold that
// many elements of at least minSize bytes each, so a forged length cannot
// make the decoder allocate more than the input justifies.
func (d *decoder) count(minSize int) int {
	v := d.uvarint()
	if v > uint64(len(d.b)/minSize) { //nolint:gosec // G115: a length is never negative
		d.fail("count exceeds the bytes present")
		return 0
	}
	return int(v) //nolint:gosec // G115: at most len(d.b), checked above
}

func (d *decoder) fetched(r *FetchReply) {
	r.Counts.Seeders = d.uint32()
	r.Counts.Leechers = d.uint32()
	r.Counts.Snatches = d.uint32()
	r.Peers = d.swarmPeers()
}

func (d *decoder) swarmPeers() []SwarmPeer {
	n := d.count(minSwarmPeerSize)
	if n == 0 {
		return nil
	}
	ps := make([]SwarmPeer, n)
	for i := range ps {
		ps[i].Seeder = d.flag()
		d.peer(&ps[i].Peer)
	}
	return ps
}

func (d *decoder) change(c *bittorrent.Change) {
	switch op := bittorrent.ChangeOp(d.u8()); op {
	case bittorrent.OpPut, bittorrent.OpRemove, bittorrent.OpComplete:
		c.Op = op
	default:
		d.fail(fmt.Sprintf("unknown operation %d", op))
	}
	c.Seeder = d.flag()
	d.read(c.InfoHash[:])
	d.peer(&c.Peer)
}

func (d *decoder) peer(p *bittorrent.Peer) {
	var ip netip.Addr
	switch fam := d.u8(); fam {
	case familyNone:
	case family4:
		var a [4]byte
		d.read(a[:])
		ip = netip.AddrFrom4(a)
	case family6:
		var a [16]byte
		d.read(a[:])
		ip = netip.AddrFrom16(a)
	default:
		d.fail(fmt.Sprintf("unknown address family %d", fam))
	}
	var port [2]byte
	d.read(port[:])
	p.Addr = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(port[:]))
	d.read(p.ID[:])
}
