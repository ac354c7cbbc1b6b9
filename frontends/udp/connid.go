package udp

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/netip"
	"time"
)

// A connection ID proves that a client can receive packets at its source
// address, so that nobody can announce on behalf of a spoofed address. It is
// stateless: any node holding the key can check it, and nothing is stored
// per client. Its 8 bytes are, big endian:
//
//	bytes 0-1  minting time in Unix seconds, modulo 2^16
//	bytes 2-7  the first 48 bits of HMAC-SHA256(key, t || ip)
//
// where t is the full minting time in Unix seconds as 8 bytes and ip the
// client's address as 16 bytes (IPv4 in its mapped form). The verifier
// rebuilds t from its own clock and the 16 time bits, which is unambiguous
// because IDs live for minutes while the 16 bits wrap after 18 hours; a
// wrapped or altered time yields a different t and so a wrong MAC. Forging an
// ID takes about 2^47 guesses per address and time window.
//
// The layout is shared by every node using the same keys, so changing it
// makes nodes of different versions reject each other's IDs during a
// rolling upgrade; the golden connect reply in testdata pins it.
const (
	// connIDMaxAge is how long an ID is accepted after minting. BEP 15
	// promises two minutes; some clients reuse IDs for longer.
	connIDMaxAge = 5 * time.Minute
	// connIDMaxSkew is how far in the future an ID may seem, for nodes
	// whose clocks disagree a little.
	connIDMaxSkew = 30 * time.Second

	connIDTimeShift = 48
	connIDMACMask   = 1<<connIDTimeShift - 1
)

// keyring is an immutable set of connection ID keys: the first mints, all
// verify. A new set replaces the old one whole, so readers never see a
// half-updated list.
type keyring struct {
	keys [][]byte
}

// newKeyring checks keys and copies them into a keyring.
func newKeyring(keys []string) (*keyring, error) {
	if err := validateKeys(keys); err != nil {
		return nil, err
	}
	kr := &keyring{keys: make([][]byte, len(keys))}
	for i, k := range keys {
		kr.keys[i] = []byte(k)
	}
	return kr, nil
}

// randomKeyring returns a keyring with one fresh random key.
func randomKeyring() *keyring {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // never fails: crypto/rand crashes rather than return an error
	return &keyring{keys: [][]byte{k}}
}

// idMAC mints and verifies connection IDs for one reader. It keeps one HMAC
// per key and scratch buffers, so that minting and verifying allocate
// nothing. Not safe for concurrent use.
type idMAC struct {
	ring *keyring // the keyring macs were built from
	macs []hash.Hash
	in   [8 + 16]byte
	sum  []byte
}

// use switches to ring if it is not the one in use. Building the HMACs
// allocates, which happens only when the keys change.
func (m *idMAC) use(ring *keyring) {
	if m.ring == ring {
		return
	}
	m.ring = ring
	m.macs = m.macs[:0]
	for _, k := range ring.keys {
		h := hmac.New(sha256.New, k)
		h.Reset() // precomputes the padded key state, so later Resets are cheap
		m.macs = append(m.macs, h)
	}
	if m.sum == nil {
		m.sum = make([]byte, 0, sha256.Size)
	}
}

// mint returns a connection ID for ip at now, signed with the first key.
func (m *idMAC) mint(ip netip.Addr, now time.Time) uint64 {
	sec := now.Unix()
	return uint64(sec&0xffff)<<connIDTimeShift | m.tag(0, sec, ip)
}

// verify reports whether id was minted for ip, with any key, at most
// connIDMaxAge before now.
func (m *idMAC) verify(id uint64, ip netip.Addr, now time.Time) bool {
	sec := now.Unix()
	// The difference of the low 16 bits, read as signed, is the age for any
	// ID minted within 9 hours of now either way.
	age := int64(int16(uint16(sec&0xffff) - uint16(id>>connIDTimeShift)))
	if age > int64(connIDMaxAge/time.Second) || age < -int64(connIDMaxSkew/time.Second) {
		return false
	}
	want := id & connIDMACMask
	for i := range m.macs {
		if m.tag(i, sec-age, ip) == want {
			return true
		}
	}
	return false
}

// tag computes the 48-bit MAC of time sec and ip with key i.
func (m *idMAC) tag(i int, sec int64, ip netip.Addr) uint64 {
	binary.BigEndian.PutUint64(m.in[:8], uint64(sec)) //nolint:gosec // G115: the time's bits are the MAC input
	a := ip.As16()
	copy(m.in[8:], a[:])
	h := m.macs[i]
	h.Reset()
	h.Write(m.in[:])
	m.sum = h.Sum(m.sum[:0])
	return binary.BigEndian.Uint64(m.sum) >> (64 - connIDTimeShift)
}
