package bencode

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzDecode checks that Decode never panics and that whatever it accepts
// strictly re-encodes to exactly the input, so there is one encoding per
// value and the decoder agrees with the writers.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"", "0:", "4:spam", "i0e", "i-1e", "i03e", "i-0e", "le", "de",
		"l4:spami42ee", "d3:bar4:spam3:fooi42ee", "d1:bi1e1:ai2ee", "d1:ai1e1:ai2ee",
		"i9223372036854775807e", "i-9223372036854775808e", "i9223372036854775808e",
		"lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllle",
		"d14:failure reason17:missing info_hashe", "5:abc", "2:ab3:abc",
	} {
		f.Add([]byte(s))
	}
	golden, _ := filepath.Glob(filepath.Join("testdata", "*.golden"))
	for _, path := range golden {
		if b, err := os.ReadFile(path); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := Decode(in)
		if err != nil {
			if v != nil {
				t.Fatalf("Decode(%q) returned %#v with error %v", in, v, err)
			}
			return
		}
		out, err := AppendValue(nil, v)
		if err != nil {
			t.Fatalf("AppendValue(%#v): %v", v, err)
		}
		_, strictErr := Decoder{SortedKeys: true}.Decode(in)
		if strictErr == nil && !bytes.Equal(out, in) {
			t.Fatalf("canonical input %q re-encoded as %q", in, out)
		}
		v2, err := Decoder{SortedKeys: true}.Decode(out)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode strictly: %v", out, err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("round trip changed %#v to %#v", v, v2)
		}
	})
}

// FuzzRoundTrip writes fuzzed values with the append writers and checks that
// Decode reads back exactly what was written.
func FuzzRoundTrip(f *testing.F) {
	f.Add("", int64(0), []byte{}, uint64(0), "k")
	f.Add("spam", int64(-42), []byte{0, 255, 'e', ':'}, uint64(math.MaxUint64), "")
	f.Add("e", int64(math.MinInt64), []byte("d1:ae"), uint64(math.MaxInt64), "\xff")
	f.Fuzz(func(t *testing.T, s string, i int64, b []byte, u uint64, key string) {
		// Keys "a" < "b" < "c" < "d" are written in order; key is a fourth,
		// user-chosen key written with AppendValue's sorting.
		w := AppendDictStart(nil)
		w = AppendString(w, "a")
		w = AppendInt(w, i)
		w = AppendString(w, "b")
		w = AppendBytes(w, b)
		w = AppendString(w, "c")
		w = AppendListStart(w)
		w = AppendString(w, s)
		w = AppendStringHeader(w, len(s))
		w = append(w, s...)
		w = AppendUint(w, u)
		w = AppendEnd(w)
		w = AppendEnd(w)

		v, err := Decoder{SortedKeys: true}.Decode(w)
		if u > math.MaxInt64 {
			if err == nil {
				t.Fatalf("Decode accepted %d, which overflows int64", u)
			}
			return
		}
		if err != nil {
			t.Fatalf("Decode(%q): %v", w, err)
		}
		want := map[string]any{
			"a": i,
			"b": string(b),
			"c": []any{s, s, int64(u)},
		}
		if !reflect.DeepEqual(v, want) {
			t.Fatalf("Decode(%q) = %#v, want %#v", w, v, want)
		}

		want[key] = s
		enc, err := AppendValue(nil, want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decoder{SortedKeys: true}.Decode(enc)
		if err != nil {
			t.Fatalf("Decode(AppendValue(...)) = %v for %q", err, enc)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("AppendValue round trip: got %#v, want %#v", got, want)
		}
	})
}
