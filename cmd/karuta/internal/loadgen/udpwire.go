package loadgen

import (
	"encoding/binary"
	"errors"
)

// BEP 15 as a client sees it. All integers are big endian.
const (
	protocolID uint64 = 0x41727101980

	actionConnect  uint32 = 0
	actionAnnounce uint32 = 1
	actionScrape   uint32 = 2
	actionError    uint32 = 3

	connectLen      = 16
	announceLen     = 98
	scrapeHeaderLen = 16
	hashLen         = 20
	// replyBufLen holds any reply a tracker should send (BEP 15 replies
	// fit one datagram), with a byte to spare to spot longer ones.
	replyBufLen = 2049
)

// Events of an announce, numbered as on the wire.
const (
	eventNone uint32 = iota
	eventCompleted
	eventStarted
	eventStopped
)

var be = binary.BigEndian

// errMalformed marks a reply that is not BEP 15.
var errMalformed = errors.New("malformed reply")

// announce is what a simulated peer sends, in either protocol.
type announce struct {
	infoHash [20]byte
	peerID   [20]byte
	left     uint64
	event    uint32
	key      uint32
	numWant  int32
	port     uint16
}

// appendConnect appends a connect request with transaction ID tx.
func appendConnect(b []byte, tx uint32) []byte {
	b = be.AppendUint64(b, protocolID)
	b = be.AppendUint32(b, actionConnect)
	return be.AppendUint32(b, tx)
}

// appendAnnounce appends an announce of a under connection ID conn. The IP
// field is zero, so the tracker takes the sender's address; uploaded and
// downloaded are zero.
func appendAnnounce(b []byte, conn uint64, tx uint32, a *announce) []byte {
	b = be.AppendUint64(b, conn)
	b = be.AppendUint32(b, actionAnnounce)
	b = be.AppendUint32(b, tx)
	b = append(b, a.infoHash[:]...)
	b = append(b, a.peerID[:]...)
	b = be.AppendUint64(b, 0) // downloaded
	b = be.AppendUint64(b, a.left)
	b = be.AppendUint64(b, 0) // uploaded
	b = be.AppendUint32(b, a.event)
	b = be.AppendUint32(b, 0) // IP: the sender's
	b = be.AppendUint32(b, a.key)
	b = be.AppendUint32(b, uint32(a.numWant))
	return be.AppendUint16(b, a.port)
}

// appendScrape appends a scrape of hashes under connection ID conn.
func appendScrape(b []byte, conn uint64, tx uint32, hashes [][20]byte) []byte {
	b = be.AppendUint64(b, conn)
	b = be.AppendUint32(b, actionScrape)
	b = be.AppendUint32(b, tx)
	for i := range hashes {
		b = append(b, hashes[i][:]...)
	}
	return b
}

// udpReply is a decoded reply: only what the load generator counts.
type udpReply struct {
	action uint32
	tx     uint32
	connID uint64 // connect
	// interval, leechers and seeders of an announce.
	interval, leechers, seeders uint32
	// peers of an announce (6 bytes each on IPv4, 18 on IPv6), or files
	// of a scrape.
	entries int
	msg     string // error
}

// parseReply decodes b, a reply to a request of action want sent over
// IPv6 if v6. An error reply is returned with action actionError and a nil
// error; anything that is not a well-formed reply to want is errMalformed.
// The transaction ID is decoded whenever b has a header, so a malformed
// reply can still be matched to its request.
func parseReply(b []byte, want uint32, v6 bool) (udpReply, error) {
	var r udpReply
	if len(b) < 8 {
		return r, errMalformed
	}
	r.action, r.tx = be.Uint32(b), be.Uint32(b[4:])
	b = b[8:]
	switch {
	case r.action == actionError:
		r.msg = string(b)
		return r, nil
	case r.action != want:
		return r, errMalformed
	}
	switch r.action {
	case actionConnect:
		if len(b) != 8 {
			return r, errMalformed
		}
		r.connID = be.Uint64(b)
	case actionAnnounce:
		peerLen := 6
		if v6 {
			peerLen = 18
		}
		if len(b) < 12 || (len(b)-12)%peerLen != 0 {
			return r, errMalformed
		}
		r.interval, r.leechers, r.seeders = be.Uint32(b), be.Uint32(b[4:]), be.Uint32(b[8:])
		r.entries = (len(b) - 12) / peerLen
	case actionScrape:
		if len(b)%12 != 0 {
			return r, errMalformed
		}
		r.entries = len(b) / 12
	}
	return r, nil
}
