package webtorrent

import (
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// A decoder for the one message shape clients send. encoding/json spent
// more than a third of the frontend's CPU on it (it validates the whole
// message, then walks it again by reflection, skipping each relayed offer
// twice); this walks it once. Offer and answer objects are kept as the
// raw bytes they were sent as, checked to be well-formed JSON, since they
// are spliced unchanged into the messages relayed to other peers.

var errSyntax = errors.New("malformed JSON")

// maxDepth bounds the nesting of relayed objects.
const maxDepth = 32

type scanner struct {
	b   []byte
	i   int
	err error
}

func (s *scanner) fail() {
	if s.err == nil {
		s.err = errSyntax
	}
	s.i = len(s.b)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, 0 at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) expect(c byte) {
	if s.peek() != c {
		s.fail()
		return
	}
	s.i++
}

// str decodes a string value into dst (UTF-8, as encoding/json would).
func (s *scanner) str(dst []byte) []byte {
	if s.peek() != '"' {
		s.fail()
		return dst
	}
	s.i++
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return dst
		case c == '\\':
			if s.i+1 >= len(s.b) {
				s.fail()
				return dst
			}
			e := s.b[s.i+1]
			s.i += 2
			switch e {
			case '"', '\\', '/':
				dst = append(dst, e)
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := s.hex4()
				if utf16.IsSurrogate(r) {
					// A pair is taken whole; anything else stands for
					// U+FFFD and the next escape is read on its own, as
					// encoding/json does.
					d := utf8.RuneError
					if s.i+6 <= len(s.b) && s.b[s.i] == '\\' && s.b[s.i+1] == 'u' {
						if r2, ok := parseHex4(s.b[s.i+2 : s.i+6]); ok {
							if d = utf16.DecodeRune(r, r2); d != utf8.RuneError {
								s.i += 6
							}
						}
					}
					r = d
				}
				dst = utf8.AppendRune(dst, r)
			default:
				s.fail()
				return dst
			}
		case c < 0x20:
			s.fail()
			return dst
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			s.i++
		default:
			r, size := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && size == 1 {
				dst = utf8.AppendRune(dst, utf8.RuneError) // as encoding/json does
			} else {
				dst = append(dst, s.b[s.i:s.i+size]...)
			}
			s.i += size
		}
	}
	s.fail()
	return dst
}

func (s *scanner) hex4() rune {
	if s.i+4 > len(s.b) {
		s.fail()
		return 0
	}
	r, ok := parseHex4(s.b[s.i : s.i+4])
	if !ok {
		s.fail()
		return 0
	}
	s.i += 4
	return r
}

func parseHex4(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number parses a number value. One out of float64's range is refused
// when it is to be used (as encoding/json refuses to decode it), and
// allowed when it is only passed over.
func (s *scanner) number(use bool) float64 {
	s.ws()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	intStart := s.i
	if n := digits(); n == 0 || (n > 1 && s.b[intStart] == '0') {
		s.fail()
		return 0
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			s.fail()
			return 0
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			s.fail()
			return 0
		}
	}
	if !use {
		return 0
	}
	f, err := strconv.ParseFloat(string(s.b[start:s.i]), 64)
	if err != nil {
		s.fail()
	}
	return f
}

// skip passes over one value of any kind, checking it is well-formed,
// and returns its bytes.
func (s *scanner) skip(depth int) []byte {
	c := s.peek()
	start := s.i
	switch {
	case c == '"':
		s.skipString()
	case c == '{' || c == '[':
		if depth >= maxDepth {
			s.fail()
			return nil
		}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		if s.peek() == end {
			s.i++
			break
		}
		for s.err == nil {
			if c == '{' {
				s.skipString()
				s.expect(':')
			}
			s.skip(depth + 1)
			switch s.peek() {
			case ',':
				s.i++
				continue
			case end:
				s.i++
			default:
				s.fail()
			}
			break
		}
	case c == '-' || (c >= '0' && c <= '9'):
		s.number(false)
	case c == 't':
		s.literal("true")
	case c == 'f':
		s.literal("false")
	case c == 'n':
		s.literal("null")
	default:
		s.fail()
	}
	if s.err != nil {
		return nil
	}
	return s.b[start:s.i]
}

// skipString passes over a string, checking its escapes and characters
// without decoding it.
func (s *scanner) skipString() {
	if s.peek() != '"' {
		s.fail()
		return
	}
	s.i++
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return
		case c == '\\':
			if s.i+1 >= len(s.b) {
				s.fail()
				return
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				s.i += 2
				s.hex4()
			default:
				s.fail()
				return
			}
		case c < 0x20:
			s.fail()
			return
		default:
			s.i++
		}
	}
	s.fail()
}

func (s *scanner) literal(lit string) {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		s.fail()
		return
	}
	s.i += len(lit)
}

// isNull consumes a null if one comes next.
func (s *scanner) isNull() bool {
	if s.peek() == 'n' {
		s.literal("null")
		return true
	}
	return false
}

// optString decodes a string or null (nil) field.
func (s *scanner) optString() *string {
	if s.isNull() {
		return nil
	}
	v := string(s.str(nil))
	return &v
}

func (s *scanner) optNumber() *float64 {
	if s.isNull() {
		return nil
	}
	v := s.number(true)
	return &v
}

// raw keeps a value's bytes, null included, as json.RawMessage does.
func (s *scanner) raw() []byte { return s.skip(0) }

// object walks an object, calling field with each key (decoded) and the
// scanner positioned at its value, which field must consume.
func (s *scanner) object(field func(key []byte)) {
	s.expect('{')
	if s.peek() == '}' {
		s.i++
		return
	}
	var key []byte
	for s.err == nil {
		key = s.str(key[:0])
		s.expect(':')
		if s.err != nil {
			return
		}
		field(key)
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return
		default:
			s.fail()
		}
	}
}

// scanRequest decodes a client message into r.
func scanRequest(msg []byte, r *request) error {
	*r = request{}
	s := &scanner{b: msg}
	if s.peek() != '{' {
		return errNotObject
	}
	s.object(func(key []byte) {
		switch string(key) {
		case "action":
			if s.isNull() {
				r.Action = ""
			} else {
				r.Action = string(s.str(nil))
			}
		case "event":
			if s.isNull() {
				r.Event = ""
			} else {
				r.Event = string(s.str(nil))
			}
		case "info_hash":
			r.InfoHash = s.raw()
		case "peer_id":
			r.PeerID = s.optString()
		case "to_peer_id":
			r.ToPeerID = s.optString()
		case "offer_id":
			r.OfferID = s.optString()
		case "numwant":
			r.NumWant = s.optNumber()
		case "uploaded":
			r.Uploaded = s.optNumber()
		case "downloaded":
			r.Downloaded = s.optNumber()
		case "left":
			r.Left = s.optNumber()
		case "answer":
			r.Answer = s.raw()
		case "offers":
			r.Offers = s.offers()
		default:
			s.skip(0)
		}
	})
	s.ws()
	if s.err == nil && s.i != len(s.b) {
		s.fail()
	}
	return s.err
}

// offers decodes the offers array (or null).
func (s *scanner) offers() []offer {
	if s.isNull() {
		return nil
	}
	s.expect('[')
	out := []offer{}
	if s.peek() == ']' {
		s.i++
		return out
	}
	for s.err == nil {
		var o offer
		if !s.isNull() {
			s.object(func(key []byte) {
				switch string(key) {
				case "offer_id":
					if s.isNull() {
						o.OfferID = ""
					} else {
						o.OfferID = string(s.str(nil))
					}
				case "offer":
					o.Offer = s.raw()
				default:
					s.skip(0)
				}
			})
		}
		out = append(out, o)
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return out
		default:
			s.fail()
		}
	}
	return out
}
