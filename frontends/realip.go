package frontends

import (
	"bytes"
	"net/netip"
	"strings"
)

// The real client address behind trusted proxies, shared by the
// connection-oriented frontends (HTTP, WebTorrent).

// Trusted reports whether addr is one of the configured proxies.
func Trusted(proxies []netip.Prefix, addr netip.Addr) bool {
	for _, p := range proxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// RealIP returns the address to attribute a request to. peer is the TCP
// peer, already unmapped; values are the real-IP header's lines in the
// order received. The header is believed only when peer is a trusted
// proxy: each proxy appends the address it received from, so walking the
// list from the right, past our own trusted proxies, the first untrusted
// entry is the client, and everything left of it is whatever the client
// chose to send. If every entry is trusted, the leftmost one is the client.
// A trusted proxy that sent no header is taken to be the client itself.
// ok is false when the entry a trusted proxy vouches for is not an
// address.
func RealIP(proxies []netip.Prefix, peer netip.Addr, values [][]byte) (netip.Addr, bool) {
	if len(values) == 0 || !Trusted(proxies, peer) {
		return peer, true
	}
	var last netip.Addr
	for i := len(values) - 1; i >= 0; i-- {
		v := values[i]
		for len(v) > 0 {
			entry := v
			if j := bytes.LastIndexByte(v, ','); j >= 0 {
				entry, v = v[j+1:], v[:j]
			} else {
				v = nil
			}
			entry = TrimOWS(entry)
			if len(entry) == 0 {
				continue // "a, , b" or a trailing comma: nothing was claimed
			}
			a, ok := parseIPEntry(entry)
			if !ok {
				// The entry a trusted proxy vouches for is garbage: guessing
				// would hand out the proxy's address as a peer.
				return netip.Addr{}, false
			}
			if !Trusted(proxies, a) {
				return a, true
			}
			last = a
		}
	}
	if !last.IsValid() {
		return peer, true
	}
	return last, true
}

// parseIPEntry reads one forwarded address: an IPv4 or IPv6 address,
// optionally with a port ("1.2.3.4:80", "[2001:db8::1]:80") as some proxies
// write them. Zoned addresses are refused, since no other peer could use
// them.
func parseIPEntry(b []byte) (netip.Addr, bool) {
	if b[0] == '[' {
		end := bytes.IndexByte(b, ']')
		if end < 0 || (end+1 < len(b) && b[end+1] != ':') {
			return netip.Addr{}, false
		}
		b = b[1:end]
	} else if i := bytes.IndexByte(b, ':'); i >= 0 && bytes.IndexByte(b[i+1:], ':') < 0 {
		b = b[:i] // exactly one colon: IPv4 with a port
	}
	a, err := netip.ParseAddr(string(b))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// TrimOWS trims HTTP's optional whitespace (spaces and tabs) from both
// ends of a header value.
func TrimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// ParsePrefix reads an IP (as a single-address prefix) or a CIDR. Host bits
// set in a CIDR are cleared, since "10.1.2.3/8" plainly means 10.0.0.0/8.
// IPv4-mapped IPv6 is unmapped to match unmapped client addresses.
func ParsePrefix(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return netip.Prefix{}, false
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}
