package ring

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// gossipNet is an in-memory network for memberlist, so a test runs many
// members in one process (inside a synctest bubble, on a fake clock) and
// cuts one off without waiting out real sockets. It follows memberlist's
// own MockNetwork but adds what that one lacks for failure tests: a lock,
// delivery that never blocks the sender (a full or closed inbox loses the
// packet, as UDP would), and cutting a member off.
type gossipNet struct {
	mu    sync.Mutex
	next  int
	byAdr map[string]*gossipTransport
}

// newGossipNet returns an empty network. Call it inside the synctest
// bubble before starting members: memberlist's Shutdown does not wait for a
// probe in flight, and synctest stops the clock once the test function
// returns, so the cleanup registered here (running after the members'
// Close) gives those probes a fake minute to time out and end.
func newGossipNet(t *testing.T) *gossipNet {
	t.Cleanup(func() { <-time.After(time.Minute) })
	return &gossipNet{byAdr: map[string]*gossipTransport{}}
}

// newTransport returns a transport at a fresh address on the network.
func (n *gossipNet) newTransport() *gossipTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.next++
	t := &gossipTransport{
		net:     n,
		addr:    &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + n.next},
		packets: make(chan *memberlist.Packet, 256),
		streams: make(chan net.Conn, 16),
		stop:    make(chan struct{}),
	}
	n.byAdr[t.addr.String()] = t
	return t
}

// cut makes addr unreachable both ways, as a pulled cable would: packets
// to and from it are lost and dials fail. heal undoes it.
func (n *gossipNet) cut(addr string) { n.setCut(addr, true) }

func (n *gossipNet) heal(addr string) { n.setCut(addr, false) }

func (n *gossipNet) setCut(addr string, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t := n.byAdr[addr]; t != nil {
		t.cut = cut
	}
}

// route finds the live transport at addr, reachable from from.
func (n *gossipNet) route(from *gossipTransport, addr string) (*gossipTransport, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	to := n.byAdr[addr]
	switch {
	case to == nil:
		return nil, fmt.Errorf("gossipnet: no route to %s", addr)
	case from.cut || to.cut:
		return nil, fmt.Errorf("gossipnet: %s cut off from %s", from.addr, addr)
	}
	select {
	case <-to.stop:
		return nil, fmt.Errorf("gossipnet: %s is shut down", addr)
	default:
	}
	return to, nil
}

// gossipTransport is one member's end of a gossipNet.
type gossipTransport struct {
	net      *gossipNet
	addr     *net.TCPAddr
	packets  chan *memberlist.Packet
	streams  chan net.Conn
	stop     chan struct{}
	stopOnce sync.Once
	cut      bool // guarded by net.mu
}

var _ memberlist.Transport = (*gossipTransport)(nil)

// FinalAdvertiseAddr is the transport's own address, whatever was asked.
func (t *gossipTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.addr.IP, t.addr.Port, nil
}

// WriteTo delivers a packet unless the link is cut or the inbox full.
func (t *gossipTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	now := time.Now()
	to, err := t.net.route(t, addr)
	if err != nil {
		return now, nil // lost, as a UDP datagram would be
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: t.addr, Timestamp: now}
	select {
	case to.packets <- p:
	case <-to.stop:
	default:
	}
	return now, nil
}

// PacketCh is where packets to this member arrive.
func (t *gossipTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// DialTimeout connects a pipe to addr's stream inbox.
func (t *gossipTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	to, err := t.net.route(t, addr)
	if err != nil {
		return nil, err
	}
	local, remote := net.Pipe()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case to.streams <- remote:
		return local, nil
	case <-to.stop:
	case <-timer.C:
	}
	_ = local.Close()
	_ = remote.Close()
	return nil, errors.New("gossipnet: dial " + addr + ": refused")
}

// StreamCh is where streams dialled to this member arrive.
func (t *gossipTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown stops accepting packets and streams.
func (t *gossipTransport) Shutdown() error {
	t.stopOnce.Do(func() { close(t.stop) })
	return nil
}
