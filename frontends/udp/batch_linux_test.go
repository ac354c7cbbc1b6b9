//go:build linux

package udp

import (
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/karuta-tracker/karuta/frontends"
)

// TestBatchIO queues datagrams from several clients, IPv4 and IPv6, on a
// dual-stack socket, reads them with one recvmmsg, and checks that each
// reply of one sendmmsg reaches the client that asked.
func TestBatchIO(t *testing.T) {
	requireIPv6(t)
	server := listenUDP(t, "udp", "[::]:0")
	port := server.LocalAddr().(*net.UDPAddr).Port
	pio, n, err := newPacketIO(server, 8)
	if err != nil || n != 8 {
		t.Fatalf("newPacketIO: %v, batch %d", err, n)
	}
	b := pio.(*batchIO)

	hosts := []string{"127.0.0.1", "::1", "127.0.0.1", "::1"}
	clients := make([]*net.UDPConn, len(hosts))
	for i, host := range hosts {
		clients[i] = dialUDP(t, netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port)))
		// Loopback queues the datagram before Write returns.
		if _, err := clients[i].Write(connectPacket(uint32(100 + i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := clients[0].Write(make([]byte, 3000)); err != nil { // too long: cut and dropped
		t.Fatal(err)
	}

	slots := make([]slot, n)
	for i := range slots {
		slots[i] = newSlot()
	}
	got, err := b.read(slots)
	if err != nil || got != len(hosts)+1 {
		t.Fatalf("read = %d, %v; want %d datagrams in one call", got, err, len(hosts)+1)
	}
	h := newTestHandler(t, &fakeTracker{})
	for i := range got {
		s := &slots[i]
		if i < len(hosts) {
			want := netip.AddrPortFrom(netip.MustParseAddr(hosts[i]), uint16(clients[i].LocalAddr().(*net.UDPAddr).Port))
			if from := netip.AddrPortFrom(s.from.Addr().Unmap(), s.from.Port()); from != want {
				t.Errorf("datagram %d from %s, want %s", i, from, want)
			}
		}
		h.handle(s, testNow)
	}
	if slots[len(hosts)].drop != frontends.DropTooLong {
		t.Errorf("3000-byte datagram: drop %q, n %d", slots[len(hosts)].drop, slots[len(hosts)].n)
	}
	if err := b.write(slots[:got]); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		r := readReply(t, c)
		if replyAction(r) != actionConnect || replyTxID(r) != uint32(100+i) {
			t.Errorf("client %d got % x, want its connect reply", i, r)
		}
	}
}

// TestBatchIOSkipsRefusedDestination checks that a reply the kernel
// refuses is marked unsent and does not hold up the rest of the batch.
func TestBatchIOSkipsRefusedDestination(t *testing.T) {
	server := listenUDP(t, "udp4", "127.0.0.1:0")
	port := uint16(server.LocalAddr().(*net.UDPAddr).Port)
	pio, n, err := newPacketIO(server, 4)
	if err != nil {
		t.Fatal(err)
	}
	b := pio.(*batchIO)
	clients := make([]*net.UDPConn, 3)
	for i := range clients {
		clients[i] = dialUDP(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
		if _, err := clients[i].Write(connectPacket(uint32(i))); err != nil {
			t.Fatal(err)
		}
	}
	slots := make([]slot, n)
	for i := range slots {
		slots[i] = newSlot()
	}
	got, err := b.read(slots)
	if err != nil || got != 3 {
		t.Fatalf("read = %d, %v", got, err)
	}
	h := newTestHandler(t, &fakeTracker{})
	for i := range got {
		h.handle(&slots[i], testNow)
	}
	// Point the middle reply at port 0, which the kernel refuses (EINVAL).
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.names[1]))
	sa.Port = 0
	if err := b.write(slots[:got]); err == nil {
		t.Error("write reported no error")
	}
	if slots[0].unsent || !slots[1].unsent || slots[2].unsent {
		t.Errorf("unsent = %v, %v, %v; want only the middle one", slots[0].unsent, slots[1].unsent, slots[2].unsent)
	}
	for _, i := range []int{0, 2} {
		if r := readReply(t, clients[i]); replyTxID(r) != uint32(i) {
			t.Errorf("client %d got % x", i, r)
		}
	}
}

func listenUDP(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

func dialUDP(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readReply(t *testing.T, c *net.UDPConn) []byte {
	t.Helper()
	buf := make([]byte, 2048)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}
