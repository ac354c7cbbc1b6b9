package http

import (
	"bytes"
	"net/netip"
)

// trusted reports whether addr is one of the configured proxies.
func trusted(proxies []netip.Prefix, addr netip.Addr) bool {
	for _, p := range proxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// realIP returns the address to attribute a request to. peer is the TCP
// peer, already unmapped; values are the real-IP header's lines in the
// order received. The header is believed only when peer is a trusted
// proxy: each proxy appends the address it received from, so walking the
// list from the right, past our own trusted proxies, the first untrusted
// entry is the client, and everything left of it is whatever the client
// chose to send. If every entry is trusted, the leftmost one is the client.
// A trusted proxy that sent no header is taken to be the client itself.
func realIP(proxies []netip.Prefix, peer netip.Addr, values [][]byte) (netip.Addr, error) {
	if len(values) == 0 || !trusted(proxies, peer) {
		return peer, nil
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
			entry = trimOWS(entry)
			if len(entry) == 0 {
				continue // "a, , b" or a trailing comma: nothing was claimed
			}
			a, ok := parseIPEntry(entry)
			if !ok {
				// The entry a trusted proxy vouches for is garbage: guessing
				// would hand out the proxy's address as a peer.
				return netip.Addr{}, ErrUnknownClientIP
			}
			if !trusted(proxies, a) {
				return a, nil
			}
			last = a
		}
	}
	if !last.IsValid() {
		return peer, nil
	}
	return last, nil
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

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
