package loadgen

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// udpSocket is one line of /proc/net/udp or udp6: a socket's local
// address and the datagrams the kernel dropped on it, its receive buffer
// being full.
type udpSocket struct {
	local netip.AddrPort
	drops uint64
}

// parseProcNetUDP parses /proc/net/udp or /proc/net/udp6. Addresses are
// printed as the hex of 32-bit words in the kernel's byte order, ports in
// plain hex.
func parseProcNetUDP(b []byte) ([]udpSocket, error) {
	var out []udpSocket
	first := true
	for line := range bytes.Lines(b) {
		f := bytes.Fields(line)
		if first {
			first = false
			if len(f) > 0 && string(f[0]) == "sl" {
				continue
			}
		}
		if len(f) == 0 {
			continue
		}
		if len(f) < 13 {
			return nil, fmt.Errorf("socket line with %d fields: %q", len(f), bytes.TrimSpace(line))
		}
		local, err := parseProcAddr(string(f[1]))
		if err != nil {
			return nil, err
		}
		drops, err := strconv.ParseUint(string(f[len(f)-1]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("drops of %s: %w", local, err)
		}
		out = append(out, udpSocket{local: local, drops: drops})
	}
	return out, nil
}

// parseProcAddr decodes "0100007F:1B39" (IPv4) or the 32-hex-digit IPv6
// form.
func parseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := bytes.Cut([]byte(s), []byte(":"))
	port, err := strconv.ParseUint(string(p), 16, 16)
	if !ok || err != nil || (len(h) != 8 && len(h) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	raw := make([]byte, len(h)/2)
	if _, err := hex.Decode(raw, h); err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	// Each word was printed as a number: put it back in memory order.
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// SocketDrops is what the kernel dropped on the UDP sockets at one
// address over a run: the tracker's (Side "server", every socket bound to
// a --url's address or to its port on any address) or the bench's own
// ("client"). Only sockets in this host's network namespace are seen.
type SocketDrops struct {
	Addr  string `json:"addr"`
	Side  string `json:"side"`
	Drops uint64 `json:"drops"`
}

// readUDPSockets reads /proc/net/udp and udp6 under root ("/proc").
func readUDPSockets(root string) ([]udpSocket, error) {
	var all []udpSocket
	for _, name := range []string{"udp", "udp6"} {
		b, err := os.ReadFile(filepath.Join(root, "net", name))
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6, or no procfs
		}
		if err != nil {
			return nil, err
		}
		s, err := parseProcNetUDP(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		all = append(all, s...)
	}
	return all, nil
}

// dropsAt sums the drops of the sockets that receive what is sent to a:
// those bound to a, or to a's port on the unspecified address of a's
// family or IPv6's (which takes IPv4 too). It reports false when there is
// no such socket here.
func dropsAt(socks []udpSocket, a netip.AddrPort) (uint64, bool) {
	var n uint64
	found := false
	for _, s := range socks {
		l := s.local.Addr()
		wild := l.IsUnspecified() && (l.Is4() == a.Addr().Is4() || l.Is6())
		if s.local.Port() == a.Port() && (l == a.Addr() || wild) {
			n += s.drops
			found = true
		}
	}
	return n, found
}

// socketGroup names a set of UDP addresses whose drops are reported as
// one: a tracker's address, or all of the bench's own sockets.
type socketGroup struct {
	name, side string
	addrs      []netip.AddrPort
}

// socketWatch follows the kernel's drop counts at groups of addresses.
type socketWatch struct {
	groups []socketGroup
	before []uint64
	seen   []bool
}

// watchSockets takes the first reading.
func watchSockets(groups []socketGroup) *socketWatch {
	w := &socketWatch{groups: groups}
	socks, err := readUDPSockets("/proc")
	if err != nil {
		return w
	}
	w.before, w.seen = groupDrops(socks, groups)
	return w
}

// groupDrops sums each group's drops, and says which groups have a
// socket here.
func groupDrops(socks []udpSocket, groups []socketGroup) ([]uint64, []bool) {
	drops, seen := make([]uint64, len(groups)), make([]bool, len(groups))
	for i, g := range groups {
		for _, a := range g.addrs {
			n, ok := dropsAt(socks, a)
			drops[i] += n
			seen[i] = seen[i] || ok
		}
	}
	return drops, seen
}

// finish reads again and returns the drops since, for the groups that
// had sockets both times.
func (w *socketWatch) finish() []SocketDrops {
	if w.before == nil {
		return nil
	}
	socks, err := readUDPSockets("/proc")
	if err != nil {
		return nil
	}
	after, seen := groupDrops(socks, w.groups)
	var out []SocketDrops
	for i, g := range w.groups {
		if !seen[i] || !w.seen[i] {
			continue
		}
		d := SocketDrops{Addr: g.name, Side: g.side}
		if after[i] >= w.before[i] {
			d.Drops = after[i] - w.before[i]
		}
		out = append(out, d)
	}
	return out
}
