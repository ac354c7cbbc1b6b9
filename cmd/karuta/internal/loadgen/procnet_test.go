package loadgen

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// procAddr prints a as the kernel does in /proc/net/udp: each 32-bit word
// of the address as a number in this machine's byte order, then the port.
func procAddr(a netip.AddrPort) string {
	var b strings.Builder
	raw := a.Addr().AsSlice()
	for i := 0; i < len(raw); i += 4 {
		fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(raw[i:]))
	}
	fmt.Fprintf(&b, ":%04X", a.Port())
	return b.String()
}

func procLine(sl int, local netip.AddrPort, drops uint64) string {
	return fmt.Sprintf("%5d: %s 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 230503 2 00000000cec33a62 %d", sl, procAddr(local), drops)
}

const procHeader = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"

func TestParseProcNetUDP(t *testing.T) {
	socks := []udpSocket{
		{netip.MustParseAddrPort("127.0.1.3:16969"), 0},
		{netip.MustParseAddrPort("127.0.1.3:16969"), 7}, // a second reader, SO_REUSEPORT
		{netip.MustParseAddrPort("0.0.0.0:6969"), 2},
		{netip.MustParseAddrPort("[::1]:6969"), 5},
		{netip.MustParseAddrPort("[2001:db8::1]:443"), 1},
	}
	text := procHeader
	for i, s := range socks {
		text += procLine(i, s.local, s.drops) + "\n"
	}
	got, err := parseProcNetUDP([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(socks) {
		t.Fatalf("%d sockets, want %d", len(got), len(socks))
	}
	for i := range socks {
		if got[i] != socks[i] {
			t.Errorf("socket %d = %v, want %v", i, got[i], socks[i])
		}
	}
	for _, tt := range []struct {
		addr  string
		drops uint64
		found bool
	}{
		{"127.0.1.3:16969", 7, true},
		{"127.0.0.1:6969", 2, true}, // bound to every address
		{"[::1]:6969", 5, true},     // not the IPv4 wildcard's
		{"127.0.1.4:16969", 0, false},
	} {
		n, ok := dropsAt(got, netip.MustParseAddrPort(tt.addr))
		if n != tt.drops || ok != tt.found {
			t.Errorf("drops at %s = %d, %v; want %d, %v", tt.addr, n, ok, tt.drops, tt.found)
		}
	}

	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 { // a line as x86 prints it
		s, err := parseProcNetUDP([]byte(" 1150: 0100007F:6959 00000000:0000 07 00000000:0000D000 00:00000000 00000000     0        0 230503 2 00000000cec33a62 3\n"))
		if err != nil || len(s) != 1 || s[0].local != netip.MustParseAddrPort("127.0.0.1:26969") || s[0].drops != 3 {
			t.Errorf("x86 line: %v, %v", s, err)
		}
	}
	for _, bad := range []string{
		"1: 0100007F:6959 00000000:0000 07\n",
		" 1: 0100007:6959 00000000:0000 07 00000000:0000D000 00:00000000 00000000 0 0 1 2 0 3\n",
		" 1: 0100007F:GGGG 00000000:0000 07 00000000:0000D000 00:00000000 00000000 0 0 1 2 0 3\n",
		" 1: 0100007F:6959 00000000:0000 07 00000000:0000D000 00:00000000 00000000 0 0 1 2 0 x\n",
	} {
		if s, err := parseProcNetUDP([]byte(bad)); err == nil {
			t.Errorf("%q: parsed as %v, want an error", bad, s)
		}
	}
}

func TestGroupDrops(t *testing.T) {
	socks := []udpSocket{
		{netip.MustParseAddrPort("127.0.1.1:6969"), 4},
		{netip.MustParseAddrPort("127.0.0.1:40001"), 1},
		{netip.MustParseAddrPort("127.0.0.1:40002"), 2},
	}
	groups := []socketGroup{
		{name: "127.0.1.1:6969", side: "server", addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.1.1:6969")}},
		{name: "127.0.1.2:6969", side: "server", addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.1.2:6969")}},
		{name: "bench", side: "client", addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:40001"), netip.MustParseAddrPort("127.0.0.1:40002")}},
	}
	drops, seen := groupDrops(socks, groups)
	if drops[0] != 4 || !seen[0] || seen[1] || drops[2] != 3 || !seen[2] {
		t.Errorf("drops %v seen %v", drops, seen)
	}
}
