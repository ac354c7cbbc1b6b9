package bencode

import (
	"fmt"
	"math"
)

// Default limits of a zero Decoder.
const (
	DefaultMaxDepth     = 64
	DefaultMaxStringLen = 1 << 20
)

// Decoder reads bencoded values strictly: integers and lengths without
// leading zeros or "-0", dictionary keys unique, nesting and string lengths
// bounded, and nothing after the value. The zero value uses the default
// limits and accepts keys in any order. A Decoder holds no state, so one
// value is safe for concurrent use.
type Decoder struct {
	// MaxDepth bounds the nesting of lists and dictionaries; 0 means
	// DefaultMaxDepth. It keeps hostile input from exhausting the stack.
	MaxDepth int
	// MaxStringLen bounds the length of a byte string; 0 means
	// DefaultMaxStringLen.
	MaxStringLen int
	// SortedKeys rejects dictionaries whose keys are not in strictly
	// increasing byte order, as BEP 3 requires of writers. Tests turn it on
	// to check that our own output is canonical.
	SortedKeys bool
}

// SyntaxError describes malformed input and where it was found.
type SyntaxError struct {
	// Offset is the byte offset in the input at which decoding failed.
	Offset int
	Msg    string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("bencode: offset %d: %s", e.Offset, e.Msg)
}

// Decode decodes data with a zero Decoder.
func Decode(data []byte) (any, error) { return Decoder{}.Decode(data) }

// Decode decodes the single value data holds. Byte strings become string,
// integers int64, lists []any and dictionaries map[string]any. Malformed
// input returns a *SyntaxError; Decode never panics.
func (d Decoder) Decode(data []byte) (any, error) {
	if d.MaxDepth <= 0 {
		d.MaxDepth = DefaultMaxDepth
	}
	if d.MaxStringLen <= 0 {
		d.MaxStringLen = DefaultMaxStringLen
	}
	p := parser{d: d, data: data}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	if p.pos != len(data) {
		return nil, p.fail("trailing data after value")
	}
	return v, nil
}

type parser struct {
	d    Decoder
	data []byte
	pos  int
}

func (p *parser) fail(msg string) error { return &SyntaxError{Offset: p.pos, Msg: msg} }

func (p *parser) value(depth int) (any, error) {
	if p.pos >= len(p.data) {
		return nil, p.fail("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == 'i':
		p.pos++
		return p.integer()
	case c >= '0' && c <= '9':
		return p.str()
	case c == 'l':
		if depth >= p.d.MaxDepth {
			return nil, p.fail("nesting too deep")
		}
		p.pos++
		list := []any{}
		for {
			if p.pos >= len(p.data) {
				return nil, p.fail("unterminated list")
			}
			if p.data[p.pos] == 'e' {
				p.pos++
				return list, nil
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
	case c == 'd':
		if depth >= p.d.MaxDepth {
			return nil, p.fail("nesting too deep")
		}
		p.pos++
		dict := map[string]any{}
		var prev string
		for first := true; ; first = false {
			if p.pos >= len(p.data) {
				return nil, p.fail("unterminated dictionary")
			}
			if p.data[p.pos] == 'e' {
				p.pos++
				return dict, nil
			}
			if c := p.data[p.pos]; c < '0' || c > '9' {
				return nil, p.fail("dictionary key is not a string")
			}
			keyPos := p.pos
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			if _, dup := dict[k]; dup {
				return nil, &SyntaxError{Offset: keyPos, Msg: fmt.Sprintf("duplicate key %q", k)}
			}
			if p.d.SortedKeys && !first && k <= prev {
				return nil, &SyntaxError{Offset: keyPos, Msg: fmt.Sprintf("key %q is not sorted after %q", k, prev)}
			}
			prev = k
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			dict[k] = v
		}
	}
	return nil, p.fail(fmt.Sprintf("unexpected byte %q", p.data[p.pos]))
}

// integer reads the digits and 'e' of an integer whose 'i' was consumed.
func (p *parser) integer() (int64, error) {
	start := p.pos
	neg := false
	if p.pos < len(p.data) && p.data[p.pos] == '-' {
		neg = true
		p.pos++
	}
	digits := p.pos
	var u uint64
	for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
		if u > (math.MaxUint64-9)/10 {
			return 0, p.fail("integer overflows int64")
		}
		u = u*10 + uint64(p.data[p.pos]-'0')
		p.pos++
	}
	n := p.pos - digits
	switch {
	case p.pos >= len(p.data):
		return 0, p.fail("unterminated integer")
	case p.data[p.pos] != 'e':
		return 0, p.fail(fmt.Sprintf("unexpected byte %q in integer", p.data[p.pos]))
	case n == 0:
		return 0, p.fail("integer has no digits")
	case n > 1 && p.data[digits] == '0':
		return 0, &SyntaxError{Offset: start, Msg: "integer has a leading zero"}
	case neg && u == 0:
		return 0, &SyntaxError{Offset: start, Msg: "negative zero"}
	case !neg && u > math.MaxInt64, neg && u > math.MaxInt64+1:
		return 0, &SyntaxError{Offset: start, Msg: "integer overflows int64"}
	}
	p.pos++ // 'e'
	if neg {
		return -int64(u-1) - 1, nil //nolint:gosec // G115: u-1 <= MaxInt64, checked above; this form avoids overflow at MinInt64
	}
	return int64(u), nil
}

// str reads a length-prefixed byte string starting at a digit.
func (p *parser) str() (string, error) {
	start := p.pos
	n := 0
	for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
		n = n*10 + int(p.data[p.pos]-'0')
		p.pos++
		if n > p.d.MaxStringLen {
			return "", &SyntaxError{Offset: start, Msg: fmt.Sprintf("string longer than %d bytes", p.d.MaxStringLen)}
		}
		if n > len(p.data) {
			// Checked per digit, so n can never overflow whatever the limit.
			return "", &SyntaxError{Offset: start, Msg: "string runs past the end of input"}
		}
	}
	switch {
	case p.pos >= len(p.data):
		return "", p.fail("unterminated string length")
	case p.data[p.pos] != ':':
		return "", p.fail(fmt.Sprintf("unexpected byte %q in string length", p.data[p.pos]))
	case p.pos-start > 1 && p.data[start] == '0':
		return "", &SyntaxError{Offset: start, Msg: "string length has a leading zero"}
	}
	p.pos++ // ':'
	if n > len(p.data)-p.pos {
		return "", &SyntaxError{Offset: start, Msg: fmt.Sprintf("string of %d bytes runs past the end of input", n)}
	}
	s := string(p.data[p.pos : p.pos+n])
	p.pos += n
	return s, nil
}
