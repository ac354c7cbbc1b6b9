package transport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// The gossip listener: memberlist's packets over UDP and its streams over
// TCP, as its own NetTransport carries them, with the TCP side bounded
// like the data channel. memberlist holds every stream it is handed until
// its TCPTimeout (10 s on lan, 30 s on wan) whether or not anything
// arrives, so without bounds a few hosts could hold the node's every
// descriptor. Here a stream reaches memberlist only once it has sent its
// first byte; until then it waits in a preauthPool, where a silent stream
// is closed after SilentTimeout or when a talking one needs its place.
// Streams in memberlist's hands still count against the bounds until they
// close, so a flood of streams that talk and then stall is bounded too.
// Packets are not bounded here: the socket's buffer bounds them, and
// memberlist drops what its keys do not open.

const (
	// DefaultGossipStreams bounds the inbound gossip streams open at once.
	// A member opens one for each push-pull (every 2 s to 60 s, to one
	// member) and for a join, so a cluster needs few.
	DefaultGossipStreams = 512
	// DefaultGossipStreamsPerSource bounds them per unknown source.
	DefaultGossipStreamsPerSource = 8
	// DefaultGossipSilentTimeout is how long a stream may say nothing: a
	// member writes as soon as it has connected.
	DefaultGossipSilentTimeout = time.Second

	// udpPacketSize is the largest datagram read; memberlist's own
	// transport reads this much.
	udpPacketSize = 65536
	// udpRecvBuffer is the receive buffer asked for, halved until the
	// kernel takes it.
	udpRecvBuffer = 2 << 20
)

// GossipOptions configure a Gossip transport. Zero values take the
// defaults noted.
type GossipOptions struct {
	// Bind is the host:port gossip listens on, TCP and UDP; port 0 picks
	// a free port, the same for both.
	Bind string
	// LocalAddr is the IP address streams to other nodes leave from;
	// empty lets the kernel choose.
	LocalAddr string
	// KnownHost reports whether a current member is known at an address;
	// streams from such addresses yield last. Nil knows none. Called on
	// every accepted stream; must not block.
	KnownHost func(netip.Addr) bool
	// MaxStreams bounds the inbound streams open at once (default
	// DefaultGossipStreams), MaxStreamsPerSource those from one unknown
	// source (default DefaultGossipStreamsPerSource).
	MaxStreams, MaxStreamsPerSource int
	// SilentTimeout is how long an inbound stream may send nothing before
	// it is closed (default DefaultGossipSilentTimeout).
	SilentTimeout time.Duration
	// Log receives rate-limited warnings; nil means none.
	Log *zap.Logger
	// Registerer receives the listener's metrics; nil means none.
	Registerer prometheus.Registerer
}

// Gossip is memberlist's network for production: a
// memberlist.NodeAwareTransport whose TCP listener is bounded. Plug it in
// through memberlist.Config.Transport (ring.MembershipOptions.Transport).
// It is safe for concurrent use.
type Gossip struct {
	opts      GossipOptions
	localAddr *net.TCPAddr
	tcp       *net.TCPListener
	udp       *net.UDPConn
	pre       *preauthPool
	metrics   *gossipMetrics
	log       *zap.Logger
	rejectLog *ratelog.Limiter
	acceptLog *ratelog.Limiter

	packets  chan *memberlist.Packet
	streams  chan net.Conn
	shutdown chan struct{}
	stopped  atomic.Bool
	wg       sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*Gossip)(nil)

// NewGossip opens the listeners and starts serving them.
func NewGossip(opts GossipOptions) (*Gossip, error) {
	if opts.MaxStreams < 0 || opts.MaxStreamsPerSource < 0 || opts.SilentTimeout < 0 {
		return nil, errors.New("transport: gossip: negative bound")
	}
	setDefault(&opts.MaxStreams, DefaultGossipStreams)
	setDefault(&opts.MaxStreamsPerSource, DefaultGossipStreamsPerSource)
	setDefault(&opts.SilentTimeout, DefaultGossipSilentTimeout)
	if opts.KnownHost == nil {
		opts.KnownHost = func(netip.Addr) bool { return false }
	}
	g := &Gossip{
		opts:      opts,
		log:       opts.Log,
		rejectLog: ratelog.New(10 * time.Second),
		acceptLog: ratelog.New(10 * time.Second),
		metrics:   newGossipMetrics(opts.Registerer),
		packets:   make(chan *memberlist.Packet),
		streams:   make(chan net.Conn),
		shutdown:  make(chan struct{}),
	}
	if g.log == nil {
		g.log = zap.NewNop()
	}
	g.pre = newPreauthPool(opts.MaxStreams, opts.MaxStreamsPerSource, false, func(d int) { g.metrics.streams.Add(float64(d)) })
	if opts.LocalAddr != "" {
		ip, err := netip.ParseAddr(opts.LocalAddr)
		if err != nil {
			return nil, fmt.Errorf("transport: gossip: local address %q: %w", opts.LocalAddr, err)
		}
		g.localAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	}
	if err := g.listen(); err != nil {
		return nil, err
	}
	g.wg.Add(2)
	go g.acceptLoop()
	go g.packetLoop()
	return g, nil
}

// listen binds TCP and UDP on one port. With port 0 the kernel picks the
// TCP port, which UDP may already have taken: try again a few times.
func (g *Gossip) listen() error {
	ta, err := net.ResolveTCPAddr("tcp", g.opts.Bind)
	if err != nil {
		return fmt.Errorf("transport: gossip: bind %q: %w", g.opts.Bind, err)
	}
	tries := 1
	if ta.Port == 0 {
		tries = 10
	}
	for i := 0; ; i++ {
		tcp, err := net.ListenTCP("tcp", ta)
		if err != nil {
			return fmt.Errorf("transport: gossip: listen tcp %s: %w", ta, err)
		}
		ua := &net.UDPAddr{IP: ta.IP, Port: tcp.Addr().(*net.TCPAddr).Port, Zone: ta.Zone}
		udp, err := net.ListenUDP("udp", ua)
		if err != nil {
			_ = tcp.Close()
			if i+1 < tries {
				continue
			}
			return fmt.Errorf("transport: gossip: listen udp %s: %w", ua, err)
		}
		for size := udpRecvBuffer; size > 0; size /= 2 {
			if udp.SetReadBuffer(size) == nil {
				break
			}
		}
		g.tcp, g.udp = tcp, udp
		return nil
	}
}

// FinalAdvertiseAddr returns the address other members reach this one
// at: ip and port when given (port 0: the bound port), else the bound
// address, or for a wildcard bind the host's first private address, as
// memberlist's own transport does.
func (g *Gossip) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	bound := g.tcp.Addr().(*net.TCPAddr)
	if port == 0 {
		port = bound.Port
	}
	if ip != "" {
		a := net.ParseIP(ip)
		if a == nil {
			return nil, 0, fmt.Errorf("transport: gossip: advertise address %q is not an IP address", ip)
		}
		if a4 := a.To4(); a4 != nil {
			a = a4
		}
		return a, port, nil
	}
	if !bound.IP.IsUnspecified() {
		return bound.IP, port, nil
	}
	priv, err := sockaddr.GetPrivateIP()
	if err != nil {
		return nil, 0, fmt.Errorf("transport: gossip: interface addresses: %w", err)
	}
	if priv == "" {
		return nil, 0, errors.New("transport: gossip: bound to a wildcard address, no private address found, and no advertise address set")
	}
	return net.ParseIP(priv), port, nil
}

// WriteTo sends a packet to addr.
func (g *Gossip) WriteTo(b []byte, addr string) (time.Time, error) {
	return g.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress sends a packet to a.Addr.
func (g *Gossip) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	ua, err := net.ResolveUDPAddr("udp", a.Addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = g.udp.WriteTo(b, ua)
	return time.Now(), err
}

// PacketCh delivers received packets.
func (g *Gossip) PacketCh() <-chan *memberlist.Packet { return g.packets }

// DialTimeout opens a stream to addr.
func (g *Gossip) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return g.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout opens a stream to a.Addr from LocalAddr.
func (g *Gossip) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if g.localAddr != nil {
		d.LocalAddr = g.localAddr
	}
	return d.Dial("tcp", a.Addr)
}

// StreamCh delivers inbound streams that have sent their first byte.
func (g *Gossip) StreamCh() <-chan net.Conn { return g.streams }

// Shutdown closes the listeners and the streams waiting for their first
// byte, and waits for the transport's goroutines. Streams already handed
// to memberlist are memberlist's to close.
func (g *Gossip) Shutdown() error {
	if g.stopped.Swap(true) {
		return nil
	}
	close(g.shutdown)
	_ = g.tcp.Close()
	_ = g.udp.Close()
	g.pre.closeWaiting()
	g.wg.Wait()
	return nil
}

// Addr is the bound TCP (and UDP) address.
func (g *Gossip) Addr() net.Addr { return g.tcp.Addr() }

func (g *Gossip) packetLoop() {
	defer g.wg.Done()
	for {
		buf := make([]byte, udpPacketSize)
		n, from, err := g.udp.ReadFrom(buf)
		now := time.Now()
		if err != nil {
			if g.stopped.Load() {
				return
			}
			if n, ok := g.acceptLog.Allow(); ok {
				g.log.Warn("gossip: reading a packet failed", zap.Error(err), zap.Uint64("events", n))
			}
			continue
		}
		if n < 1 {
			continue
		}
		select {
		case g.packets <- &memberlist.Packet{Buf: buf[:n], From: from, Timestamp: now}:
		case <-g.shutdown:
			return
		}
	}
}

func (g *Gossip) acceptLoop() {
	defer g.wg.Done()
	var backoff time.Duration
	for {
		nc, err := g.tcp.Accept()
		if err != nil {
			if g.stopped.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if n, ok := g.acceptLog.Allow(); ok {
				g.log.Warn("gossip: accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff), zap.Uint64("events", n))
			}
			select {
			case <-g.shutdown:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		g.admit(nc)
	}
}

// admit takes an accepted stream into the pool and waits, on its own
// goroutine, for its first byte.
func (g *Gossip) admit(nc net.Conn) {
	remote := remoteHost(nc)
	now := time.Now()
	known := remote.IsValid() && g.opts.KnownHost(remote)
	pc, reason, out := g.pre.add(nc, remote, known, now)
	for _, e := range out {
		e.c.nc.Close()
		g.reject(e.reason, e.c.nc.RemoteAddr().String())
	}
	if pc == nil {
		nc.Close()
		g.reject(reason, nc.RemoteAddr().String())
		return
	}
	g.wg.Add(1)
	go g.firstByte(pc)
}

// firstByte hands pc to memberlist once it has sent a byte, or closes it.
func (g *Gossip) firstByte(pc *pendingConn) {
	defer g.wg.Done()
	nc := pc.nc
	var b [1]byte
	_ = nc.SetReadDeadline(pc.at.Add(g.opts.SilentTimeout))
	n, err := nc.Read(b[:])
	if n == 0 || err != nil {
		nc.Close()
		if g.pre.remove(pc) && errors.Is(err, os.ErrDeadlineExceeded) {
			g.reject(reasonSilent, nc.RemoteAddr().String())
		}
		return
	}
	if !g.pre.hold(pc) {
		nc.Close() // closed for a talking one meanwhile, and counted
		return
	}
	_ = nc.SetReadDeadline(time.Time{})
	s := &gossipStream{Conn: nc, first: b[:1], release: func() { g.pre.remove(pc) }}
	select {
	case g.streams <- s:
	case <-g.shutdown:
		_ = s.Close()
	}
}

func (g *Gossip) reject(reason, remote string) {
	g.metrics.rejected.WithLabelValues(reason).Inc()
	if n, ok := g.rejectLog.Allow(); ok {
		g.log.Warn("gossip: stream refused", zap.String("reason", reason), zap.String("remote", remote), zap.Uint64("events", n))
	}
}

// gossipStream is an inbound stream handed to memberlist: the byte read
// to see that it talks comes first, and closing it gives its place in the
// pool back.
type gossipStream struct {
	net.Conn
	first   []byte
	once    sync.Once
	release func()
}

func (s *gossipStream) Read(b []byte) (int, error) {
	if len(s.first) > 0 {
		n := copy(b, s.first)
		s.first = s.first[n:]
		return n, nil
	}
	return s.Conn.Read(b)
}

func (s *gossipStream) Close() error {
	s.once.Do(s.release)
	return s.Conn.Close()
}

// closeWaiting closes every connection the pool may still close (those
// not handed over), for shutdown.
func (p *preauthPool) closeWaiting() {
	p.mu.Lock()
	var waiting []net.Conn
	for _, s := range p.bySource {
		for _, c := range s.conns {
			if !c.held {
				waiting = append(waiting, c.nc)
			}
		}
	}
	p.mu.Unlock()
	for _, nc := range waiting {
		nc.Close()
	}
}

// gossipMetrics count what the gossip listener refuses.
type gossipMetrics struct {
	rejected *prometheus.CounterVec
	streams  prometheus.Gauge
}

func newGossipMetrics(reg prometheus.Registerer) *gossipMetrics {
	const ns, sub = "karuta", "cluster"
	m := &gossipMetrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "gossip_rejected_total",
			Help: "Inbound gossip streams closed before memberlist read them, by reason: silent (nothing sent in time), pending_limit (the node's bound on streams), source_limit (one unknown source's bound).",
		}, []string{"reason"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "gossip_streams",
			Help: "Inbound gossip streams open: waiting for their first byte or in memberlist's hands.",
		}),
	}
	for _, r := range []string{reasonSilent, reasonPendingLimit, reasonSourceLimit} {
		m.rejected.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.rejected, m.streams)
	}
	return m
}
