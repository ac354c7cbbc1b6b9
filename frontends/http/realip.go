package http

import (
	"net/netip"

	"github.com/karuta-tracker/karuta/frontends"
)

// trusted reports whether addr is one of the configured proxies.
func trusted(proxies []netip.Prefix, addr netip.Addr) bool { return frontends.Trusted(proxies, addr) }

// realIP is frontends.RealIP with the client-facing error for an address
// a trusted proxy vouches for that is not one.
func realIP(proxies []netip.Prefix, peer netip.Addr, values [][]byte) (netip.Addr, error) {
	a, ok := frontends.RealIP(proxies, peer, values)
	if !ok {
		return netip.Addr{}, ErrUnknownClientIP
	}
	return a, nil
}

// trimOWS trims optional whitespace from a header value.
func trimOWS(b []byte) []byte { return frontends.TrimOWS(b) }
