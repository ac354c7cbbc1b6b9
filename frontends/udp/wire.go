package udp

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Wire format of BEP 15, with BEP 41 options after the announce. All
// integers are big endian.
const (
	// protocolID is the magic a connect request carries instead of a
	// connection ID.
	protocolID uint64 = 0x41727101980

	actionConnect  uint32 = 0
	actionAnnounce uint32 = 1
	actionScrape   uint32 = 2
	actionError    uint32 = 3

	// headerLen is the size of a request header: connection ID, action
	// and transaction ID. Anything shorter is not a request.
	headerLen        = 16
	announceLen      = 98
	connectReplyLen  = 16
	announceReplyLen = 20 // before the peers
	scrapeReplyLen   = 8  // before the counts
	errorReplyLen    = 8  // before the message
	peer4Len         = 6
	peer6Len         = 18
	scrapeEntryLen   = 12
	infoHashLen      = len(bittorrent.InfoHash{})

	// maxPacket is the longest request accepted: a scrape of 101 infohashes
	// (BEP 15 expects about 74 per packet) or an announce with 1950 bytes
	// of options. Receive buffers hold one byte more, to tell a longer
	// datagram from one of exactly this size.
	maxPacket = 2048
	// maxHashes is the most infohashes a scrape of maxPacket bytes carries.
	maxHashes = (maxPacket - headerLen) / infoHashLen
	// maxReply is the longest reply sent, so that every reply fits one
	// unfragmented datagram on any IPv6 path (1280-byte minimum MTU less
	// 48 bytes of IPv6 and UDP headers): lost fragments lose the whole
	// reply, and some clients read replies into 1500-byte buffers. It
	// bounds announces to 202 IPv4 or 67 IPv6 peers; a scrape reply is
	// always shorter than its request and fits too.
	maxReply = 1232

	optionEnd     = 0x0
	optionNOP     = 0x1
	optionURLData = 0x2
)

// Failure reasons of the frontend's own. Each is safe to show a client.
const (
	errBadConnectionID = bittorrent.ClientError("connection ID expired or invalid")
	errBadProtocolID   = bittorrent.ClientError("connect without protocol ID")
	errUnknownAction   = bittorrent.ClientError("unknown action")
	errShortAnnounce   = bittorrent.ClientError("announce shorter than 98 bytes")
	errBadOptions      = bittorrent.ClientError("malformed BEP 41 options")
)

var be = binary.BigEndian

// parseAnnounce fills req from the announce b, header included, received
// from ip. The packet's IP field is ignored: trusting it would let anyone
// add any address to a swarm. An IPv4-mapped address is unmapped, so IPv4
// clients of a dual-stack socket are IPv4 peers, and a zone is dropped, as
// it means nothing to other peers. URL data options are decoded through u.
func parseAnnounce(b []byte, ip netip.Addr, req *bittorrent.AnnounceRequest, u *urlData) error {
	if len(b) < announceLen {
		return errShortAnnounce
	}
	event := be.Uint32(b[80:])
	if event > uint32(bittorrent.EventStopped) {
		return bittorrent.ErrBadEvent
	}
	port := be.Uint16(b[96:])
	if port == 0 {
		return bittorrent.ErrBadPort
	}
	params, err := u.parse(b[announceLen:])
	if err != nil {
		return err
	}
	// BEP 15 says -1 means "default"; any negative value is taken so, as
	// it cannot be a count.
	numWant := int32(be.Uint32(b[92:])) //nolint:gosec // G115: BEP 15 sends num_want as a signed 32-bit integer
	*req = bittorrent.AnnounceRequest{
		InfoHash:   bittorrent.InfoHash(b[16:36]),
		PeerID:     bittorrent.PeerID(b[36:56]),
		Addr:       netip.AddrPortFrom(ip.Unmap().WithZone(""), port),
		Event:      bittorrent.Event(event),
		Downloaded: be.Uint64(b[56:]),
		Left:       be.Uint64(b[64:]),
		Uploaded:   be.Uint64(b[72:]),
		NumWant:    uint32(max(numWant, 0)),
		NumWantSet: numWant >= 0,
		Key:        be.Uint32(b[88:]),
		Params:     params,
	}
	return nil
}

// urlData decodes BEP 41 options into request parameters. A string is
// allocated only when the URL data differs from the previous request's; on
// most trackers nearly all clients send the same (such as "/announce"), so
// the common case allocates nothing. Strings are never built over the
// packet buffer, since AfterAnnounce keeps them past the next read. Not safe
// for concurrent use.
type urlData struct {
	buf  []byte
	last string
}

// parse decodes the options that follow an announce. Options are a type
// byte, then, except for end and NOP, a length byte and that many bytes.
// URL data options concatenate; unknown types are skipped by their length,
// as BEP 41 leaves room for new ones. An option running past the packet is
// an error.
func (u *urlData) parse(opts []byte) (bittorrent.Params, error) {
	buf := u.buf[:0]
	for i := 0; i < len(opts); {
		typ := opts[i]
		if typ == optionEnd {
			break
		}
		if typ == optionNOP {
			i++
			continue
		}
		if i+1 >= len(opts) {
			return bittorrent.Params{}, errBadOptions
		}
		start, end := i+2, i+2+int(opts[i+1])
		if end > len(opts) {
			return bittorrent.Params{}, errBadOptions
		}
		if typ == optionURLData {
			buf = append(buf, opts[start:end]...)
		}
		i = end
	}
	u.buf = buf
	if len(buf) == 0 {
		return bittorrent.Params{}, nil
	}
	if string(buf) != u.last { // the conversion in a comparison does not allocate
		u.last = string(buf)
	}
	path, query, _ := strings.Cut(u.last, "?")
	return bittorrent.Params{Path: path, Query: query}, nil
}

// parseScrape appends the infohashes of the scrape b, header included, to
// hashes. A trailing partial infohash is ignored.
func parseScrape(b []byte, hashes []bittorrent.InfoHash) []bittorrent.InfoHash {
	for b = b[headerLen:]; len(b) >= infoHashLen; b = b[infoHashLen:] {
		hashes = append(hashes, bittorrent.InfoHash(b))
	}
	return hashes
}

// putHeader writes a reply's action and transaction ID.
func putHeader(out []byte, action, txID uint32) {
	be.PutUint32(out, action)
	be.PutUint32(out[4:], txID)
}

// writeConnect writes a connect reply into out, which holds at least
// connectReplyLen bytes, and returns it.
func writeConnect(out []byte, txID uint32, connID uint64) []byte {
	putHeader(out, actionConnect, txID)
	be.PutUint64(out[8:], connID)
	return out[:connectReplyLen]
}

// writeAnnounce writes an announce reply into out (at least
// announceReplyLen bytes) and returns it. Peers are written in the
// announcer's family, 6 bytes each for IPv4 and 18 for IPv6, as many as fit
// in out; peers of the other family are skipped, as BEP 15 has no way to
// send them.
func writeAnnounce(out []byte, txID uint32, resp *bittorrent.AnnounceResponse, v6 bool) []byte {
	putHeader(out, actionAnnounce, txID)
	be.PutUint32(out[8:], resp.Interval)
	be.PutUint32(out[12:], resp.Incomplete)
	be.PutUint32(out[16:], resp.Complete)
	n := announceReplyLen
	for _, p := range resp.Peers {
		ip := p.Addr.Addr().Unmap()
		switch {
		case !v6 && ip.Is4() && n+peer4Len <= len(out):
			a := ip.As4()
			copy(out[n:], a[:])
			be.PutUint16(out[n+4:], p.Addr.Port())
			n += peer4Len
		case v6 && ip.Is6() && n+peer6Len <= len(out):
			a := ip.As16()
			copy(out[n:], a[:])
			be.PutUint16(out[n+16:], p.Addr.Port())
			n += peer6Len
		}
	}
	return out[:n]
}

// writeScrape writes a scrape reply into out (at least scrapeReplyLen
// bytes) and returns it: seeders, completed and leechers of each file in
// order, as many as fit.
func writeScrape(out []byte, txID uint32, files []bittorrent.Scrape) []byte {
	putHeader(out, actionScrape, txID)
	n := scrapeReplyLen
	for _, f := range files {
		if n+scrapeEntryLen > len(out) {
			break
		}
		be.PutUint32(out[n:], f.Seeders)
		be.PutUint32(out[n+4:], f.Snatches)
		be.PutUint32(out[n+8:], f.Leechers)
		n += scrapeEntryLen
	}
	return out[:n]
}

// writeError writes an error reply carrying msg into out and returns it,
// no longer than limit bytes (and len(out)), so that an error never
// outgrows the request it answers and the tracker cannot be used to
// amplify a spoofed flood. The message is cut at a character boundary.
// limit must be at least errorReplyLen.
func writeError(out []byte, txID uint32, msg string, limit int) []byte {
	putHeader(out, actionError, txID)
	room := min(limit, len(out)) - errorReplyLen
	if len(msg) > room {
		// msg[cut] is the first byte left out; if it continues a
		// character, leave out that character's start too.
		cut := room
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut]
	}
	return out[:errorReplyLen+copy(out[errorReplyLen:], msg)]
}
