package udp

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func TestConnID(t *testing.T) {
	const (
		keyA = "key-A-0123456789abcdef"
		keyB = "key-B-0123456789abcdef"
		keyC = "key-C-0123456789abcdef"
	)
	ip := netip.MustParseAddr("198.51.100.9")
	tests := []struct {
		name       string
		mintKeys   []string
		verifyKeys []string
		verifyIP   netip.Addr
		after      time.Duration
		want       bool
	}{
		{"at once", []string{keyA}, []string{keyA}, ip, 0, true},
		{"after 2 minutes", []string{keyA}, []string{keyA}, ip, 2 * time.Minute, true},
		{"after 4m59s", []string{keyA}, []string{keyA}, ip, 5*time.Minute - time.Second, true},
		{"after 5 minutes", []string{keyA}, []string{keyA}, ip, 5 * time.Minute, true},
		{"after 5m01s", []string{keyA}, []string{keyA}, ip, 5*time.Minute + time.Second, false},
		{"after an hour", []string{keyA}, []string{keyA}, ip, time.Hour, false},
		{"after the 16 time bits wrap", []string{keyA}, []string{keyA}, ip, 65536 * time.Second, false},
		{"from a clock 30s ahead", []string{keyA}, []string{keyA}, ip, -30 * time.Second, true},
		{"from a clock 31s ahead", []string{keyA}, []string{keyA}, ip, -31 * time.Second, false},
		{"another IPv4", []string{keyA}, []string{keyA}, netip.MustParseAddr("198.51.100.10"), 0, false},
		{"an IPv6", []string{keyA}, []string{keyA}, netip.MustParseAddr("2001:db8::9"), 0, false},
		{"the same IPv4, mapped", []string{keyA}, []string{keyA}, netip.MustParseAddr("::ffff:198.51.100.9"), 0, true},
		{"rotated-out second key", []string{keyA}, []string{keyB, keyA}, ip, time.Minute, true},
		{"rotated-in first key", []string{keyB, keyA}, []string{keyB}, ip, time.Minute, true},
		{"unknown key", []string{keyC}, []string{keyA, keyB}, ip, 0, false},
	}
	now := time.Unix(1_700_000_000, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := mintFor(t, ip, now, tt.mintKeys...)
			kr, err := newKeyring(tt.verifyKeys)
			if err != nil {
				t.Fatal(err)
			}
			var m idMAC
			m.use(kr)
			if got := m.verify(id, tt.verifyIP, now.Add(tt.after)); got != tt.want {
				t.Errorf("verify(%016x) %s later = %v, want %v", id, tt.after, got, tt.want)
			}
		})
	}
}

// TestConnIDTamper checks that changing any bit of an ID, time bits
// included, voids it.
func TestConnIDTamper(t *testing.T) {
	ip := netip.MustParseAddr("2001:db8::1")
	now := time.Unix(1_700_000_000, 0)
	id := mintFor(t, ip, now)
	kr, err := newKeyring([]string{testKey})
	if err != nil {
		t.Fatal(err)
	}
	var m idMAC
	m.use(kr)
	if !m.verify(id, ip, now) {
		t.Fatal("fresh ID rejected")
	}
	for bit := range 64 {
		if m.verify(id^1<<bit, ip, now) {
			t.Errorf("ID with bit %d flipped accepted", bit)
		}
	}
}

// TestConnIDKeyReload checks that an idMAC follows keyring changes.
func TestConnIDKeyReload(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	now := time.Unix(1_700_000_000, 0)
	a, _ := newKeyring([]string{"first-key-0123456789"})
	b, _ := newKeyring([]string{"second-key-0123456789"})
	var m idMAC
	m.use(a)
	id := m.mint(ip, now)
	m.use(b)
	if m.verify(id, ip, now) {
		t.Error("ID of the old keyring accepted after switching")
	}
	if m.mint(ip, now) == id {
		t.Error("new keyring mints the same ID")
	}
}

func TestRandomKeyring(t *testing.T) {
	a, b := randomKeyring(), randomKeyring()
	if len(a.keys) != 1 || len(a.keys[0]) < minKeyLen {
		t.Fatalf("random keyring has %d keys of %d bytes", len(a.keys), len(a.keys[0]))
	}
	if string(a.keys[0]) == string(b.keys[0]) {
		t.Error("two random keys are equal")
	}
}

// sipHash24 is SipHash-2-4 of any message, written plainly from the
// algorithm's paper (Aumasson and Bernstein, 2012), to check sip24x3.
func sipHash24(k sipKey, msg []byte) uint64 {
	v0, v1, v2, v3 := k.k0^0x736f6d6570736575, k.k1^0x646f72616e646f6d, k.k0^0x6c7967656e657261, k.k1^0x7465646279746573
	// The last block holds the bytes left over and, in its top byte, the
	// message length modulo 256.
	var last [8]byte
	rest := len(msg) % 8
	copy(last[:], msg[len(msg)-rest:])
	last[7] = byte(len(msg))
	blocks := append(msg[:len(msg)-rest:len(msg)-rest], last[:]...)
	for len(blocks) > 0 {
		m := binary.LittleEndian.Uint64(blocks)
		v3 ^= m
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
		v0 ^= m
		blocks = blocks[8:]
	}
	v2 ^= 0xff
	for range 4 {
		v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	}
	return v0 ^ v1 ^ v2 ^ v3
}

// TestSipHash checks the reference against the paper's test vectors (key
// 00 01 .. 0f, message 00 01 .. of the given length), then sip24x3 against
// the reference on many 24-byte inputs.
func TestSipHash(t *testing.T) {
	var key [16]byte
	msg := make([]byte, 64)
	for i := range msg {
		msg[i] = byte(i)
	}
	copy(key[:], msg)
	k := sipKey{binary.LittleEndian.Uint64(key[:8]), binary.LittleEndian.Uint64(key[8:])}
	for _, tc := range []struct {
		n    int
		want uint64
	}{
		{0, 0x726fdb47dd0e0e31},
		{15, 0xa129ca6149be45e5},
	} {
		if got := sipHash24(k, msg[:tc.n]); got != tc.want {
			t.Errorf("SipHash-2-4 of %d bytes = %016x, want %016x", tc.n, got, tc.want)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 1000 {
		k := sipKey{rng.Uint64(), rng.Uint64()}
		in := [3]uint64{rng.Uint64(), rng.Uint64(), rng.Uint64()}
		var b [24]byte
		for i, w := range in {
			binary.BigEndian.PutUint64(b[8*i:], w)
		}
		if got, want := sip24x3(k, in[0], in[1], in[2]), sipHash24(k, b[:]); got != want {
			t.Fatalf("sip24x3(%x) = %016x, reference %016x", b, got, want)
		}
	}
}
