package transport

import (
	"encoding/binary"
	"fmt"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// SignalRequest carries WebRTC offers and answers from the node holding
// the sender's WebSocket to the node holding the receiver's, one hop.
// The receiver hands them to its WebTorrent frontend and acknowledges
// with Ack; a signal whose socket is gone is dropped there and counted.
type SignalRequest struct {
	Signals []bittorrent.Signal
}

func (*SignalRequest) isRequest() {}

// MaxSignalSDP bounds a signal's SDP on the wire, far above what a
// WebTorrent frontend accepts in one message.
const MaxSignalSDP = 1 << 20

// The encoding of a signal:
//
//	signal kind:1 (1 offer, 2 answer) infohash:20 from:peer to:peer
//	       offerid:uvarint-length bytes (≤ bittorrent.MaxOfferIDLen)
//	       sdp:uvarint-length bytes (≤ MaxSignalSDP)
//
// where from carries FromID and to carries ToID as the peer's id.
const minSignalSize = 1 + 20 + 2*minPeerSize + 1 + 1

func appendSignalRequest(dst []byte, r *SignalRequest) ([]byte, error) {
	dst = append(dst, kindSignal)
	dst = binary.AppendUvarint(dst, uint64(len(r.Signals)))
	for i := range r.Signals {
		s := &r.Signals[i]
		switch {
		case s.Kind != bittorrent.SignalOffer && s.Kind != bittorrent.SignalAnswer:
			return dst, fmt.Errorf("encode signal %d: unknown kind %d", i, s.Kind)
		case len(s.OfferID) > bittorrent.MaxOfferIDLen:
			return dst, fmt.Errorf("encode signal %d: offer id of %d bytes; at most %d", i, len(s.OfferID), bittorrent.MaxOfferIDLen)
		case len(s.SDP) > MaxSignalSDP:
			return dst, fmt.Errorf("encode signal %d: sdp of %d bytes; at most %d", i, len(s.SDP), MaxSignalSDP)
		}
		dst = append(dst, byte(s.Kind))
		dst = append(dst, s.InfoHash[:]...)
		var err error
		if dst, err = appendPeer(dst, &bittorrent.Peer{ID: s.FromID, Addr: s.From}); err != nil {
			return dst, fmt.Errorf("encode signal %d: %w", i, err)
		}
		if dst, err = appendPeer(dst, &bittorrent.Peer{ID: s.ToID, Addr: s.To}); err != nil {
			return dst, fmt.Errorf("encode signal %d: %w", i, err)
		}
		dst = binary.AppendUvarint(dst, uint64(len(s.OfferID)))
		dst = append(dst, s.OfferID...)
		dst = binary.AppendUvarint(dst, uint64(len(s.SDP)))
		dst = append(dst, s.SDP...)
	}
	return dst, nil
}

func (d *decoder) signalRequest() *SignalRequest {
	n := d.count(minSignalSize)
	r := &SignalRequest{}
	if n == 0 {
		return r
	}
	r.Signals = make([]bittorrent.Signal, n)
	for i := range r.Signals {
		s := &r.Signals[i]
		switch k := bittorrent.SignalKind(d.u8()); k {
		case bittorrent.SignalOffer, bittorrent.SignalAnswer:
			s.Kind = k
		default:
			d.fail(fmt.Sprintf("unknown signal kind %d", k))
		}
		d.read(s.InfoHash[:])
		var p bittorrent.Peer
		d.peer(&p)
		s.From, s.FromID = p.Addr, p.ID
		d.peer(&p)
		s.To, s.ToID = p.Addr, p.ID
		if l := d.uvarint(); l > bittorrent.MaxOfferIDLen {
			d.fail("offer id too long")
		} else {
			s.OfferID = string(d.bytes(int(l)))
		}
		if l := d.uvarint(); l > MaxSignalSDP {
			d.fail("sdp too long")
		} else if b := d.bytes(int(l)); b != nil {
			s.SDP = append([]byte(nil), b...)
		}
		if d.err != nil {
			return nil
		}
	}
	return r
}
