package http

import (
	"bytes"
	"math"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Announce parameters the frontend reads. Others stay in Params.Query for
// hooks; "ip" in particular is ignored so clients cannot announce someone
// else's address.
const (
	pInfoHash = iota
	pPeerID
	pPort
	pUploaded
	pDownloaded
	pLeft
	pEvent
	pNumWant
	pCompact
	pNoPeerID
	pKey
	numParams
)

var paramNames = [numParams]string{
	pInfoHash: "info_hash", pPeerID: "peer_id", pPort: "port", pUploaded: "uploaded",
	pDownloaded: "downloaded", pLeft: "left", pEvent: "event", pNumWant: "numwant",
	pCompact: "compact", pNoPeerID: "no_peer_id", pKey: "key",
}

// paramIndex returns the index of the announce parameter named by the raw
// (still escaped) key, or -1 for any other key.
func paramIndex(rawKey []byte) int {
	key := rawKey
	var buf [16]byte
	if bytes.IndexByte(rawKey, '%') >= 0 || bytes.IndexByte(rawKey, '+') >= 0 {
		n, ok := unescapeQuery(buf[:], rawKey)
		if !ok || n > len(buf) {
			return -1
		}
		key = buf[:n]
	}
	switch string(key) {
	case "info_hash":
		return pInfoHash
	case "peer_id":
		return pPeerID
	case "port":
		return pPort
	case "uploaded":
		return pUploaded
	case "downloaded":
		return pDownloaded
	case "left":
		return pLeft
	case "event":
		return pEvent
	case "numwant":
		return pNumWant
	case "compact":
		return pCompact
	case "no_peer_id":
		return pNoPeerID
	case "key":
		return pKey
	}
	return -1
}

// nextParam splits the first key=value pair off q. A pair without '='
// has an empty value.
func nextParam(q []byte) (key, value, rest []byte) {
	pair := q
	if i := bytes.IndexByte(q, '&'); i >= 0 {
		pair, rest = q[:i], q[i+1:]
	}
	if i := bytes.IndexByte(pair, '='); i >= 0 {
		return pair[:i], pair[i+1:], rest
	}
	return pair, nil, rest
}

// parseAnnounce fills the query-borne fields of req from the raw query q
// and returns the client's port. It allocates nothing and never keeps q.
// Addr and Params are left to the caller, which knows the client's IP.
func parseAnnounce(q []byte, req *bittorrent.AnnounceRequest) (port uint16, err error) {
	req.Event = bittorrent.EventNone
	req.Uploaded, req.Downloaded, req.Left = 0, 0, 0
	req.NumWant, req.NumWantSet = 0, false
	req.Compact, req.NoPeerID = true, false
	req.Key = 0
	var seen [numParams]bool
	var p uint64
	for len(q) > 0 {
		var k, v []byte
		k, v, q = nextParam(q)
		i := paramIndex(k)
		if i < 0 {
			continue
		}
		if seen[i] {
			return 0, repeatedErr[i]
		}
		seen[i] = true
		switch i {
		case pInfoHash:
			err = unescapeHash(req.InfoHash[:], v, errBadInfoHash)
		case pPeerID:
			err = unescapeHash(req.PeerID[:], v, errBadPeerID)
		case pPort:
			p, err = parseUint(v, errBadPort, errBadPort)
			if err == nil && (p == 0 || p > math.MaxUint16) {
				err = errBadPort
			}
		case pUploaded:
			req.Uploaded, err = parseUint(v, ErrBadUploaded, ErrBigUploaded)
		case pDownloaded:
			req.Downloaded, err = parseUint(v, ErrBadDownloaded, ErrBigDownloaded)
		case pLeft:
			req.Left, err = parseUint(v, ErrBadLeft, ErrBigLeft)
		case pNumWant:
			var n uint64
			n, err = parseUint(v, ErrBadNumWant, ErrBigNumWant)
			// The chain caps numwant far lower; clamping keeps huge values
			// from wrapping to small ones.
			req.NumWant, req.NumWantSet = uint32(min(n, math.MaxUint32)), true
		case pEvent:
			req.Event, err = parseEvent(v)
		case pCompact:
			req.Compact = !isZero(v)
		case pNoPeerID:
			req.NoPeerID = !isZero(v)
		case pKey:
			req.Key = parseKey(v)
		}
		if err != nil {
			return 0, err
		}
	}
	switch {
	case !seen[pInfoHash]:
		return 0, errMissingInfoHash
	case !seen[pPeerID]:
		return 0, errMissingPeerID
	case !seen[pPort]:
		return 0, errMissingPort
	case !seen[pLeft]:
		return 0, ErrMissingLeft
	}
	return uint16(p), nil
}

// parseScrape appends the info_hash values of the raw query q to hashes.
// Other parameters are ignored. It allocates only to grow hashes.
func parseScrape(q []byte, hashes []bittorrent.InfoHash) ([]bittorrent.InfoHash, error) {
	for len(q) > 0 {
		var k, v []byte
		k, v, q = nextParam(q)
		if paramIndex(k) != pInfoHash {
			continue
		}
		var ih bittorrent.InfoHash
		if err := unescapeHash(ih[:], v, errBadInfoHash); err != nil {
			return hashes, err
		}
		hashes = append(hashes, ih)
	}
	return hashes, nil
}

// unescapeHash decodes the escaped value v into dst, which it must fill
// exactly; otherwise it returns errLen.
func unescapeHash(dst []byte, v []byte, errLen error) error {
	var buf [21]byte // one spare byte tells "too long" from "exact"
	n, ok := unescapeQuery(buf[:], v)
	if !ok {
		return ErrBadEscape
	}
	if n != len(dst) {
		return errLen
	}
	copy(dst, buf[:n])
	return nil
}

// parseUint reads a non-negative decimal integer that fits in 64 bits from
// the escaped value v. It returns errBig for a longer run of digits and
// errBad for anything else.
func parseUint(v []byte, errBad, errBig error) (uint64, error) {
	var buf [24]byte
	n, ok := unescapeQuery(buf[:], v)
	if !ok {
		return 0, ErrBadEscape
	}
	if n == 0 {
		return 0, errBad
	}
	if n > len(buf) {
		// Too long to be read here; a run of plain digits is a number
		// too large, anything else is not a number.
		for _, c := range v {
			if c < '0' || c > '9' {
				return 0, errBad
			}
		}
		return 0, errBig
	}
	var (
		u   uint64
		big bool
	)
	for _, c := range buf[:n] {
		if c < '0' || c > '9' {
			return 0, errBad
		}
		d := uint64(c - '0')
		if u > (math.MaxUint64-d)/10 {
			big = true // keep looking: "99…9x" is bad, not big
		}
		u = u*10 + d
	}
	if big {
		return 0, errBig
	}
	return u, nil
}

func parseEvent(v []byte) (bittorrent.Event, error) {
	var buf [16]byte
	n, ok := unescapeQuery(buf[:], v)
	if !ok {
		return 0, ErrBadEscape
	}
	if n > len(buf) {
		return 0, errBadEvent
	}
	switch string(buf[:n]) {
	case "", "empty", "paused":
		// BEP 3 calls the absent event "empty" and some clients spell it
		// out; BEP 21's "paused" (libtorrent sends it for partial seeds)
		// is a regular announce as far as the swarm is concerned.
		return bittorrent.EventNone, nil
	case "started":
		return bittorrent.EventStarted, nil
	case "completed":
		return bittorrent.EventCompleted, nil
	case "stopped":
		return bittorrent.EventStopped, nil
	}
	return 0, errBadEvent
}

// isZero reports whether the flag value v is "0", the one spelling that
// turns compact and no_peer_id off; "compact" alone or "compact=1" turn
// them on.
func isZero(v []byte) bool { return len(v) == 1 && v[0] == '0' }

// parseKey maps the client's key to a number. No BEP fixes its format:
// clients send 8 hex digits, decimal, or random text. Only equality matters
// (recognising one client across address changes), so up to 8 hex digits
// are read as hex and anything else is hashed with FNV-1a; it never fails.
func parseKey(v []byte) uint32 {
	var buf [64]byte
	n, ok := unescapeQuery(buf[:], v)
	s := v
	if ok && n <= len(buf) {
		s = buf[:n]
	}
	if len(s) > 0 && len(s) <= 8 {
		var k uint32
		hex := true
		for _, c := range s {
			d := unhex(c)
			if d < 0 {
				hex = false
				break
			}
			k = k<<4 | uint32(d&0xf)
		}
		if hex {
			return k
		}
	}
	h := uint32(2166136261)
	for _, c := range s {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}

// unescapeQuery decodes the form-encoded s ('+' is a space) into dst and
// returns the decoded length, which may exceed len(dst): then only len(dst)
// bytes were written. ok is false if s holds a malformed escape.
func unescapeQuery(dst []byte, s []byte) (n int, ok bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '%':
			if i+2 >= len(s) {
				return n, false
			}
			hi, lo := unhex(s[i+1]), unhex(s[i+2])
			if hi < 0 || lo < 0 {
				return n, false
			}
			c = byte((hi<<4 | lo) & 0xff)
			i += 2
		case '+':
			c = ' '
		}
		if n < len(dst) {
			dst[n] = c
		}
		n++
	}
	return n, true
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}
