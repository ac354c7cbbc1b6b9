package webtorrent

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// The WebTorrent tracker protocol: JSON text messages over a WebSocket.
// Binary values (info_hash, peer_id) are "binary strings", one character
// per byte (U+0000 to U+00FF). A client sends
//
//	{"action":"announce","info_hash":…,"peer_id":…,"numwant":…,"left":…,
//	 "event":…,"offers":[{"offer_id":…,"offer":{…}}]}
//	{"action":"announce","info_hash":…,"peer_id":…,"to_peer_id":…,
//	 "offer_id":…,"answer":{…}}
//	{"action":"scrape","info_hash":… or […] or absent}
//
// and receives the announce's counts, the offers of other peers, the
// answers to its own offers, scrape results, and failure reasons.

// request is a client message as decoded. Offer and answer objects stay
// raw: they are relayed, never interpreted.
type request struct {
	Action     string          `json:"action"`
	InfoHash   json.RawMessage `json:"info_hash"`
	PeerID     *string         `json:"peer_id"`
	NumWant    *float64        `json:"numwant"`
	Uploaded   *float64        `json:"uploaded"`
	Downloaded *float64        `json:"downloaded"`
	Left       *float64        `json:"left"`
	Event      string          `json:"event"`
	Offers     []offer         `json:"offers"`
	Answer     json.RawMessage `json:"answer"`
	ToPeerID   *string         `json:"to_peer_id"`
	OfferID    *string         `json:"offer_id"`
}

type offer struct {
	OfferID string          `json:"offer_id"`
	Offer   json.RawMessage `json:"offer"`
}

// Client errors; their text is the failure reason sent back.
var (
	errBadJSON     = bittorrent.ClientError("message is not a JSON object")
	errBadAction   = bittorrent.ClientError("action must be announce or scrape")
	errBadInfoHash = bittorrent.ClientError("info_hash must be a 20-character binary string")
	errBadPeerID   = bittorrent.ClientError("peer_id must be a 20-character binary string")
	errBadEvent    = bittorrent.ClientError("event must be started, stopped, completed, update or empty")
	errBadOffer    = bittorrent.ClientError("each offer needs an offer_id of 1 to 64 characters and an offer object")
	errBadAnswer   = bittorrent.ClientError("an answer needs to_peer_id, offer_id and an answer object")
	errBadScrape   = bittorrent.ClientError("info_hash must be a binary string or a list of them")
	errFullScrape  = bittorrent.ClientError("full scrape is disabled on this tracker; name the torrents with info_hash")
	errFullLimited = bittorrent.ClientError("full scrape rate limit exceeded; try again later")
	errTooManyIHs  = bittorrent.ClientError("too many swarms on one socket")
)

// decodeBinary decodes a binary string into dst, which it fills exactly.
func decodeBinary(s string, dst []byte) bool {
	n := 0
	for _, r := range s {
		if r > 0xff || n == len(dst) {
			return false
		}
		dst[n] = byte(r) //nolint:gosec // G115: r is at most 0xff, checked above
		n++
	}
	return n == len(dst)
}

func parseInfoHash(raw json.RawMessage) (bittorrent.InfoHash, error) {
	var ih bittorrent.InfoHash
	var buf [64]byte
	sc := scanner{b: raw}
	v := sc.str(buf[:0])
	if sc.ws(); sc.err != nil || sc.i != len(raw) || !decodeBinary(string(v), ih[:]) {
		return ih, errBadInfoHash
	}
	return ih, nil
}

func parsePeerID(s *string) (bittorrent.PeerID, error) {
	var id bittorrent.PeerID
	if s == nil || !decodeBinary(*s, id[:]) {
		return id, errBadPeerID
	}
	return id, nil
}

// parseScrapeHashes decodes info_hash as one hash or a list; none is a
// full scrape.
func parseScrapeHashes(raw json.RawMessage, maxHashes int, dst []bittorrent.InfoHash) ([]bittorrent.InfoHash, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return dst, nil
	}
	if raw[0] != '[' {
		ih, err := parseInfoHash(raw)
		return append(dst, ih), err
	}
	sc := scanner{b: raw}
	sc.expect('[')
	if sc.peek() == ']' {
		return dst, nil
	}
	var buf [64]byte
	for n := 1; ; n++ {
		if n > maxHashes {
			return dst, bittorrent.ErrTooManyHashes
		}
		v := sc.str(buf[:0])
		var ih bittorrent.InfoHash
		if sc.err != nil {
			return dst, errBadScrape
		}
		if !decodeBinary(string(v), ih[:]) {
			return dst, errBadInfoHash
		}
		dst = append(dst, ih)
		if sc.peek() != ',' {
			break
		}
		sc.i++
	}
	if sc.expect(']'); sc.err != nil {
		return dst, errBadScrape
	}
	return dst, nil
}

func parseEvent(s string) (bittorrent.Event, error) {
	switch s {
	case "", "update", "paused":
		return bittorrent.EventNone, nil
	case "started":
		return bittorrent.EventStarted, nil
	case "stopped":
		return bittorrent.EventStopped, nil
	case "completed":
		return bittorrent.EventCompleted, nil
	}
	return 0, errBadEvent
}

// count turns a JSON number into a non-negative integer, clamped; absent
// or null is def.
func count(f *float64, def uint64) uint64 {
	switch {
	case f == nil || math.IsNaN(*f):
		return def
	case *f <= 0:
		return 0
	case *f >= math.MaxUint64:
		return math.MaxUint64
	}
	return uint64(*f)
}

func isObject(raw json.RawMessage) bool { return len(raw) > 1 && raw[0] == '{' }

var errNotObject = errors.New("not a JSON object")

// decodeRequest parses one client message: a JSON object in valid UTF-8
// (a text frame must be; a relayed offer must not make a browser drop the
// socket it is sent on).
func decodeRequest(msg []byte, r *request) error {
	if !utf8.Valid(msg) {
		*r = request{}
		return errNotObject
	}
	return scanRequest(msg, r)
}

// Encoding. Messages are built by appending, so a relayed offer costs one
// allocation: the message itself.

// appendBinary appends b as a JSON binary string, escaping what is not
// printable ASCII so the output is plain ASCII.
func appendBinary(dst []byte, b []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for _, c := range b {
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20 || c >= 0x7f:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// appendString appends s, a string as JSON decoded it (UTF-8), as a JSON
// string: an offer ID is echoed back exactly as the client sent it.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			dst = append(dst, '\\', byte(r))
		case r < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return append(dst, '"')
}

func appendUint(dst []byte, key string, v uint64) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, key...)
	dst = append(dst, '"', ':')
	return strconv.AppendUint(dst, v, 10)
}

// announceReply is the answer to an announce.
func announceReply(ih bittorrent.InfoHash, resp *bittorrent.AnnounceResponse) []byte {
	b := make([]byte, 0, 160)
	b = append(b, `{"action":"announce","info_hash":`...)
	b = appendBinary(b, ih[:])
	b = appendUint(b, "interval", uint64(resp.Interval))
	b = appendUint(b, "complete", uint64(resp.Complete))
	b = appendUint(b, "incomplete", uint64(resp.Incomplete))
	return append(b, '}')
}

// signalMessage is what the receiver of a signal is sent: another peer's
// offer or the answer to its own.
func signalMessage(sig *bittorrent.Signal) []byte {
	b := make([]byte, 0, 160+len(sig.OfferID)*6+len(sig.SDP))
	b = append(b, `{"action":"announce","info_hash":`...)
	b = appendBinary(b, sig.InfoHash[:])
	b = append(b, `,"peer_id":`...)
	b = appendBinary(b, sig.FromID[:])
	b = append(b, `,"offer_id":`...)
	b = appendString(b, sig.OfferID)
	if sig.Kind == bittorrent.SignalOffer {
		b = append(b, `,"offer":`...)
	} else {
		b = append(b, `,"answer":`...)
	}
	b = append(b, sig.SDP...)
	return append(b, '}')
}

// failure is a failure reason, for the action and swarm it concerns.
func failure(action string, ih *bittorrent.InfoHash, reason string) []byte {
	b := make([]byte, 0, 96+len(reason))
	b = append(b, `{"action":`...)
	b = strconv.AppendQuote(b, action)
	if ih != nil {
		b = append(b, `,"info_hash":`...)
		b = appendBinary(b, ih[:])
	}
	b = append(b, `,"failure reason":`...)
	b = strconv.AppendQuote(b, reason)
	return append(b, '}')
}

// appendScrapeFile appends one swarm's entry of a scrape reply.
func appendScrapeFile(b []byte, f *bittorrent.Scrape, first bool) []byte {
	if !first {
		b = append(b, ',')
	}
	b = appendBinary(b, f.InfoHash[:])
	b = append(b, `:{"complete":`...)
	b = strconv.AppendUint(b, uint64(f.Seeders), 10)
	b = appendUint(b, "incomplete", uint64(f.Leechers))
	b = appendUint(b, "downloaded", uint64(f.Snatches))
	return append(b, '}')
}
