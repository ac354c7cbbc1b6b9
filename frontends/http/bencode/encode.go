// Package bencode writes and reads the BitTorrent serialisation format (BEP 3):
// append-style writers that allocate nothing for tracker responses, and a
// strict decoder for tests, fuzzing and load generation.
package bencode

import (
	"fmt"
	"slices"
	"strconv"
)

// The writers below append to dst and return the extended slice, like
// strconv.AppendInt, so a caller that reuses a buffer with enough capacity
// pays for no allocation. They do not check nesting: a dictionary's keys must
// be written in sorted order, each followed by its value, and every Start
// closed by an End.

// AppendString appends s as a byte string: its length, a colon, then s.
func AppendString(dst []byte, s string) []byte {
	dst = strconv.AppendUint(dst, uint64(len(s)), 10)
	dst = append(dst, ':')
	return append(dst, s...)
}

// AppendBytes appends b as a byte string.
func AppendBytes(dst, b []byte) []byte {
	dst = strconv.AppendUint(dst, uint64(len(b)), 10)
	dst = append(dst, ':')
	return append(dst, b...)
}

// AppendStringHeader appends the length prefix of a byte string of n bytes,
// which the caller must then append itself. It lets compact peer lists be
// written in place, without first collecting them in a second buffer.
func AppendStringHeader(dst []byte, n int) []byte {
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, ':')
}

// AppendInt appends i as an integer.
func AppendInt(dst []byte, i int64) []byte {
	dst = append(dst, 'i')
	dst = strconv.AppendInt(dst, i, 10)
	return append(dst, 'e')
}

// AppendUint appends u as an integer. Bencode integers have no fixed width,
// so values above math.MaxInt64 are valid, although Decode rejects them.
func AppendUint(dst []byte, u uint64) []byte {
	dst = append(dst, 'i')
	dst = strconv.AppendUint(dst, u, 10)
	return append(dst, 'e')
}

// AppendDictStart opens a dictionary.
func AppendDictStart(dst []byte) []byte { return append(dst, 'd') }

// AppendListStart opens a list.
func AppendListStart(dst []byte) []byte { return append(dst, 'l') }

// AppendEnd closes the innermost open dictionary or list.
func AppendEnd(dst []byte) []byte { return append(dst, 'e') }

// AppendValue appends v, which may be a string, []byte, a signed or unsigned
// integer, []any, []string or map[string]any nested to any depth, in canonical
// form (dictionary keys sorted). It is the convenient, allocating
// counterpart of the writers above, meant for tests and tools; it is the
// inverse of Decode.
func AppendValue(dst []byte, v any) ([]byte, error) {
	return appendValue(dst, v, 0)
}

// maxEncodeDepth stops AppendValue on cyclic or absurdly deep values instead
// of overflowing the stack.
const maxEncodeDepth = 1000

func appendValue(dst []byte, v any, depth int) ([]byte, error) {
	if depth > maxEncodeDepth {
		return dst, fmt.Errorf("bencode: value nested deeper than %d", maxEncodeDepth)
	}
	switch v := v.(type) {
	case string:
		return AppendString(dst, v), nil
	case []byte:
		return AppendBytes(dst, v), nil
	case int:
		return AppendInt(dst, int64(v)), nil
	case int8:
		return AppendInt(dst, int64(v)), nil
	case int16:
		return AppendInt(dst, int64(v)), nil
	case int32:
		return AppendInt(dst, int64(v)), nil
	case int64:
		return AppendInt(dst, v), nil
	case uint:
		return AppendUint(dst, uint64(v)), nil
	case uint8:
		return AppendUint(dst, uint64(v)), nil
	case uint16:
		return AppendUint(dst, uint64(v)), nil
	case uint32:
		return AppendUint(dst, uint64(v)), nil
	case uint64:
		return AppendUint(dst, v), nil
	case []string:
		dst = AppendListStart(dst)
		for _, s := range v {
			dst = AppendString(dst, s)
		}
		return AppendEnd(dst), nil
	case []any:
		dst = AppendListStart(dst)
		for _, e := range v {
			var err error
			if dst, err = appendValue(dst, e, depth+1); err != nil {
				return dst, err
			}
		}
		return AppendEnd(dst), nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys) // Go compares strings bytewise, as BEP 3 requires
		dst = AppendDictStart(dst)
		for _, k := range keys {
			dst = AppendString(dst, k)
			var err error
			if dst, err = appendValue(dst, v[k], depth+1); err != nil {
				return dst, err
			}
		}
		return AppendEnd(dst), nil
	}
	return dst, fmt.Errorf("bencode: cannot encode %T", v)
}
