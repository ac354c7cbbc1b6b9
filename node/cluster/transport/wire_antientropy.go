package transport

import (
	"encoding/binary"
	"fmt"
)

// The wire format of the anti-entropy messages (antientropy.go), in the
// style and with the rules of wire.go:
//
//	DigestRequest   0x20 from view:8 count:uvarint digest:8*count    (count is 0 or DigestRanges)
//	CompareRequest  0x21 from view:8 count:uvarint compared*count    (count ≤ MaxCompareSwarms)
//	RepairRequest   0x22 count:uvarint repairswarm*count
//	DigestReply     0xa0 count:uvarint range:uvarint*count           (range < DigestRanges)
//	CompareReply    0xa1 count:uvarint index:uvarint*count           (index < MaxCompareSwarms)
//
//	from        len:uvarint name:len                                 (len ≤ maxMemberName)
//	compared    infohash:20 digest:8
//	repairswarm infohash:20 snatches:uvarint count:uvarint agedpeer*count
//	agedpeer    seeder:1 age:uvarint peer
//
// view and digest are big-endian.
const (
	kindDigest       byte = 0x20
	kindCompare      byte = 0x21
	kindRepair       byte = 0x22
	kindDigestReply  byte = 0xa0
	kindCompareReply byte = 0xa1

	// Smallest encodings of the list elements, as in wire.go.
	digestSize      = 8
	minComparedSize = 20 + 8
	minRepairSwarm  = 20 + 1 + 1
	minAgedPeerSize = 1 + 1 + minPeerSize
	minIndexSize    = 1
)

// appendAntiEntropyRequest appends req if it is an anti-entropy request,
// reporting whether it was.
func appendAntiEntropyRequest(dst []byte, req Request) ([]byte, bool, error) {
	switch r := req.(type) {
	case *DigestRequest:
		if r == nil {
			return dst, false, nil
		}
		if n := len(r.Digests); n != 0 && n != DigestRanges {
			return dst, true, fmt.Errorf("encode request: %d digests; want 0 or %d", n, DigestRanges)
		}
		dst, err := appendFrom(append(dst, kindDigest), r.From, r.View)
		if err != nil {
			return dst, true, err
		}
		dst = binary.AppendUvarint(dst, uint64(len(r.Digests)))
		for _, d := range r.Digests {
			dst = binary.BigEndian.AppendUint64(dst, d)
		}
		return dst, true, nil
	case *CompareRequest:
		if r == nil {
			return dst, false, nil
		}
		if len(r.Swarms) > MaxCompareSwarms {
			return dst, true, fmt.Errorf("encode request: %d swarms to compare; at most %d", len(r.Swarms), MaxCompareSwarms)
		}
		dst, err := appendFrom(append(dst, kindCompare), r.From, r.View)
		if err != nil {
			return dst, true, err
		}
		dst = binary.AppendUvarint(dst, uint64(len(r.Swarms)))
		for i := range r.Swarms {
			dst = append(dst, r.Swarms[i].InfoHash[:]...)
			dst = binary.BigEndian.AppendUint64(dst, r.Swarms[i].Digest)
		}
		return dst, true, nil
	case *RepairRequest:
		if r == nil {
			return dst, false, nil
		}
		dst = append(dst, kindRepair)
		dst = binary.AppendUvarint(dst, uint64(len(r.Swarms)))
		for i := range r.Swarms {
			sw := &r.Swarms[i]
			dst = append(dst, sw.InfoHash[:]...)
			dst = binary.AppendUvarint(dst, uint64(sw.Snatches))
			dst = binary.AppendUvarint(dst, uint64(len(sw.Peers)))
			var err error
			for j := range sw.Peers {
				p := &sw.Peers[j]
				dst = append(dst, boolByte(p.Seeder))
				dst = binary.AppendUvarint(dst, uint64(p.Age))
				if dst, err = appendPeer(dst, &p.Peer); err != nil {
					return dst, true, fmt.Errorf("encode swarm %d peer %d: %w", i, j, err)
				}
			}
		}
		return dst, true, nil
	}
	return dst, false, nil
}

func appendFrom(dst []byte, from string, view uint64) ([]byte, error) {
	if len(from) > maxMemberName {
		return dst, fmt.Errorf("encode request: member name of %d bytes; at most %d", len(from), maxMemberName)
	}
	dst = binary.AppendUvarint(dst, uint64(len(from)))
	dst = append(dst, from...)
	return binary.BigEndian.AppendUint64(dst, view), nil
}

// appendAntiEntropyReply appends rep if it is an anti-entropy reply,
// reporting whether it was.
func appendAntiEntropyReply(dst []byte, rep Reply) ([]byte, bool, error) {
	switch r := rep.(type) {
	case *DigestReply:
		if r == nil {
			return dst, false, nil
		}
		dst = append(dst, kindDigestReply)
		dst = binary.AppendUvarint(dst, uint64(len(r.Ranges)))
		for _, rg := range r.Ranges {
			if rg >= DigestRanges {
				return dst, true, fmt.Errorf("encode reply: range %d; ranges go to %d", rg, DigestRanges-1)
			}
			dst = binary.AppendUvarint(dst, uint64(rg))
		}
		return dst, true, nil
	case *CompareReply:
		if r == nil {
			return dst, false, nil
		}
		dst = append(dst, kindCompareReply)
		dst = binary.AppendUvarint(dst, uint64(len(r.Want)))
		for _, w := range r.Want {
			if w >= MaxCompareSwarms {
				return dst, true, fmt.Errorf("encode reply: index %d; at most %d", w, MaxCompareSwarms-1)
			}
			dst = binary.AppendUvarint(dst, uint64(w))
		}
		return dst, true, nil
	}
	return dst, false, nil
}

// antiEntropyRequest decodes the rest of an anti-entropy request of kind,
// or fails on an unknown kind.
func (d *decoder) antiEntropyRequest(kind byte) Request {
	switch kind {
	case kindDigest:
		r := &DigestRequest{From: d.from(), View: d.fixed64()}
		n := d.count(digestSize)
		if n != 0 && n != DigestRanges {
			d.fail(fmt.Sprintf("%d digests; want 0 or %d", n, DigestRanges))
			return nil
		}
		if n > 0 {
			r.Digests = make([]uint64, n)
			for i := range r.Digests {
				r.Digests[i] = d.fixed64()
			}
		}
		return r
	case kindCompare:
		r := &CompareRequest{From: d.from(), View: d.fixed64()}
		n := d.count(minComparedSize)
		if n > MaxCompareSwarms {
			d.fail(fmt.Sprintf("%d swarms to compare; at most %d", n, MaxCompareSwarms))
			return nil
		}
		if n > 0 {
			r.Swarms = make([]SwarmDigest, n)
			for i := range r.Swarms {
				d.read(r.Swarms[i].InfoHash[:])
				r.Swarms[i].Digest = d.fixed64()
			}
		}
		return r
	case kindRepair:
		r := &RepairRequest{}
		if n := d.count(minRepairSwarm); n > 0 {
			r.Swarms = make([]RepairSwarm, n)
			for i := range r.Swarms {
				sw := &r.Swarms[i]
				d.read(sw.InfoHash[:])
				sw.Snatches = d.uint32()
				if m := d.count(minAgedPeerSize); m > 0 {
					sw.Peers = make([]AgedPeer, m)
					for j := range sw.Peers {
						p := &sw.Peers[j]
						p.Seeder = d.flag()
						p.Age = d.uint32()
						d.peer(&p.Peer)
					}
				}
			}
		}
		return r
	}
	d.fail(fmt.Sprintf("unknown request kind 0x%02x", kind))
	return nil
}

// antiEntropyReply decodes the rest of an anti-entropy reply of kind, or
// fails on an unknown kind.
func (d *decoder) antiEntropyReply(kind byte) Reply {
	switch kind {
	case kindDigestReply:
		r := &DigestReply{}
		if n := d.count(minIndexSize); n > 0 {
			r.Ranges = make([]uint16, n)
			for i := range r.Ranges {
				v := d.uvarint()
				if v >= DigestRanges {
					d.fail(fmt.Sprintf("range %d; ranges go to %d", v, DigestRanges-1))
					return nil
				}
				r.Ranges[i] = uint16(v)
			}
		}
		return r
	case kindCompareReply:
		r := &CompareReply{}
		if n := d.count(minIndexSize); n > 0 {
			r.Want = make([]uint16, n)
			for i := range r.Want {
				v := d.uvarint()
				if v >= MaxCompareSwarms {
					d.fail(fmt.Sprintf("index %d; at most %d", v, MaxCompareSwarms-1))
					return nil
				}
				r.Want[i] = uint16(v)
			}
		}
		return r
	}
	d.fail(fmt.Sprintf("unknown reply kind 0x%02x", kind))
	return nil
}

func (d *decoder) from() string {
	n := d.count(1)
	if n > maxMemberName {
		d.fail("member name too long")
		return ""
	}
	return string(d.bytes(n))
}

func (d *decoder) fixed64() uint64 {
	if p := d.bytes(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}
