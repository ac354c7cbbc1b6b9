package bencode

import (
	"bytes"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenCases build wire values with the append writers; each one's exact
// bytes are pinned in testdata/<name>.golden.
var goldenCases = []struct {
	name  string
	build func(dst []byte) []byte
}{
	{"empty_string", func(b []byte) []byte { return AppendString(b, "") }},
	{"string", func(b []byte) []byte { return AppendString(b, "spam") }},
	{"binary_bytes", func(b []byte) []byte { return AppendBytes(b, []byte{0, 0xff, ':', 'e'}) }},
	{"int_zero", func(b []byte) []byte { return AppendInt(b, 0) }},
	{"int_negative", func(b []byte) []byte { return AppendInt(b, -42) }},
	{"int_min", func(b []byte) []byte { return AppendInt(b, math.MinInt64) }},
	{"uint_max", func(b []byte) []byte { return AppendUint(b, math.MaxUint64) }},
	{"empty_list", func(b []byte) []byte { return AppendEnd(AppendListStart(b)) }},
	{"empty_dict", func(b []byte) []byte { return AppendEnd(AppendDictStart(b)) }},
	{"header_then_bytes", func(b []byte) []byte {
		b = AppendStringHeader(b, 6)
		return append(b, 127, 0, 0, 1, 0x1a, 0xe1)
	}},
	{"failure", func(b []byte) []byte {
		b = AppendDictStart(b)
		b = AppendString(b, "failure reason")
		b = AppendString(b, "missing info_hash")
		return AppendEnd(b)
	}},
	{"nested", func(b []byte) []byte {
		b = AppendDictStart(b)
		b = AppendString(b, "a")
		b = AppendListStart(b)
		b = AppendInt(b, 1)
		b = AppendString(b, "two")
		b = AppendDictStart(b)
		b = AppendEnd(b)
		b = AppendEnd(b)
		b = AppendString(b, "b")
		b = AppendUint(b, 7)
		return AppendEnd(b)
	}},
}

func TestWritersGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.build(nil)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got  %q\nwant %q", got, want)
			}
		})
	}
}

func TestAppendValue(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"string", "spam", "4:spam"},
		{"bytes", []byte("ab"), "2:ab"},
		{"ints", []any{int(1), int8(-2), int16(3), int32(-4), int64(5)}, "li1ei-2ei3ei-4ei5ee"},
		{"uints", []any{uint(1), uint8(2), uint16(3), uint32(4), uint64(5)}, "li1ei2ei3ei4ei5ee"},
		{"strings", []string{"a", "bc"}, "l1:a2:bce"},
		{"sorted keys", map[string]any{"b": 1, "a": "x", "ab": []any{}, "": map[string]any{}}, "d0:de1:a1:x2:able1:bi1ee"},
		{"keys sort bytewise", map[string]any{"\xff": 1, "Z": 2, "a": 3}, "d1:Zi2e1:ai3e1:\xffi1ee"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendValue(nil, tt.in)
			if err != nil {
				t.Fatalf("AppendValue: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAppendValueRejects(t *testing.T) {
	cyclic := []any{nil}
	cyclic[0] = cyclic
	for _, v := range []any{nil, 1.5, true, map[int]any{}, []any{struct{}{}}, cyclic} {
		if _, err := AppendValue(nil, v); err == nil {
			t.Errorf("AppendValue(%T) succeeded, want error", v)
		}
	}
}

func TestWritersDoNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 256)
	peer := []byte{127, 0, 0, 1, 0x1a, 0xe1}
	allocs := testing.AllocsPerRun(100, func() {
		b := AppendDictStart(buf[:0])
		b = AppendString(b, "interval")
		b = AppendInt(b, 1800)
		b = AppendString(b, "peers")
		b = AppendStringHeader(b, len(peer))
		b = append(b, peer...)
		b = AppendBytes(b, peer)
		b = AppendUint(b, 3)
		b = AppendListStart(b)
		_ = AppendEnd(AppendEnd(b))
	})
	if allocs != 0 {
		t.Errorf("writers allocated %v times per run, want 0", allocs)
	}
}

func BenchmarkAppendAnnounce(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 512)
	peers := bytes.Repeat([]byte{10, 0, 0, 1, 0x1a, 0xe1}, 50)
	for b.Loop() {
		d := AppendDictStart(buf[:0])
		d = AppendString(d, "complete")
		d = AppendInt(d, 120)
		d = AppendString(d, "incomplete")
		d = AppendInt(d, 33)
		d = AppendString(d, "interval")
		d = AppendInt(d, 1800)
		d = AppendString(d, "min interval")
		d = AppendInt(d, 900)
		d = AppendString(d, "peers")
		d = AppendBytes(d, peers)
		buf = AppendEnd(d)
	}
}
