package bencode

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{"0:", ""},
		{"4:spam", "spam"},
		{"3:\x00\xffe", "\x00\xffe"},
		{"i0e", int64(0)},
		{"i-1e", int64(-1)},
		{"i9223372036854775807e", int64(math.MaxInt64)},
		{"i-9223372036854775808e", int64(math.MinInt64)},
		{"le", []any{}},
		{"de", map[string]any{}},
		{"l4:spami42ee", []any{"spam", int64(42)}},
		{"d3:bar4:spam3:fooi42ee", map[string]any{"bar": "spam", "foo": int64(42)}},
		{"d1:bi1e1:ai2ee", map[string]any{"a": int64(2), "b": int64(1)}}, // unsorted is fine by default
		{"d1:ld1:dleee", map[string]any{"l": map[string]any{"d": []any{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	deep := strings.Repeat("l", DefaultMaxDepth+1) + strings.Repeat("e", DefaultMaxDepth+1)
	tests := []struct {
		name, in string
		dec      Decoder
		offset   int
	}{
		{"empty", "", Decoder{}, 0},
		{"unknown type", "x", Decoder{}, 0},
		{"trailing data", "i1ei2e", Decoder{}, 3},
		{"int no digits", "ie", Decoder{}, 1},
		{"int minus only", "i-e", Decoder{}, 2},
		{"int leading zero", "i03e", Decoder{}, 1},
		{"int negative leading zero", "i-03e", Decoder{}, 1},
		{"int negative zero", "i-0e", Decoder{}, 1},
		{"int plus sign", "i+1e", Decoder{}, 1},
		{"int space", "i 1e", Decoder{}, 1},
		{"int unterminated", "i12", Decoder{}, 3},
		{"int overflow", "i9223372036854775808e", Decoder{}, 1},
		{"int negative overflow", "i-9223372036854775809e", Decoder{}, 1},
		{"int huge", "i99999999999999999999999e", Decoder{}, 20},
		{"string leading zero", "03:abc", Decoder{}, 0},
		{"string negative length", "-1:a", Decoder{}, 0},
		{"string short", "5:abc", Decoder{}, 0},
		{"string no colon", "3abc", Decoder{}, 1},
		{"string unterminated length", "1", Decoder{}, 1},
		{"string length past input", "12", Decoder{}, 0},
		{"string huge length", "99999999999999999999999:", Decoder{}, 0},
		{"string over limit", "5:abcde", Decoder{MaxStringLen: 4}, 0},
		{"list unterminated", "l1:a", Decoder{}, 4},
		{"dict unterminated", "d1:ai1e", Decoder{}, 7},
		{"dict int key", "di1ei1ee", Decoder{}, 1},
		{"dict missing value", "d1:ae", Decoder{}, 4},
		{"dict duplicate key", "d1:ai1e1:ai2ee", Decoder{}, 7},
		{"dict unsorted strict", "d1:bi1e1:ai2ee", Decoder{SortedKeys: true}, 7},
		{"too deep", deep, Decoder{}, DefaultMaxDepth},
		{"too deep custom", "llleee", Decoder{MaxDepth: 2}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := tt.dec.Decode([]byte(tt.in))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Decode(%q) = %#v, %v; want a *SyntaxError", tt.in, v, err)
			}
			if se.Offset != tt.offset {
				t.Errorf("Decode(%q) offset = %d, want %d (%v)", tt.in, se.Offset, tt.offset, err)
			}
		})
	}
}

// TestDecodeGolden decodes every golden file strictly and re-encodes it:
// the writers' output must be canonical bencode.
func TestDecodeGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.build(nil)
			v, err := Decoder{SortedKeys: true}.Decode(in)
			if tc.name == "uint_max" {
				if err == nil {
					t.Fatalf("Decode(%q) succeeded; want an int64 overflow error", in)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%q): %v", in, err)
			}
			out, err := AppendValue(nil, v)
			if err != nil {
				t.Fatalf("AppendValue: %v", err)
			}
			if string(out) != string(in) {
				t.Errorf("round trip: got %q, want %q", out, in)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	in := []byte("d8:completei120e10:incompletei33e8:intervali1800e12:min intervali900e5:peers" +
		"300:" + strings.Repeat("\x0a\x00\x00\x01\x1a\xe1", 50) + "e")
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := Decode(in); err != nil {
			b.Fatal(err)
		}
	}
}
