package node

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// Caps on the operations listener's connections. Its clients are a few
// scrapers, probes and operators, so these are far above real use; they
// bound what anyone else who reaches the port (the deploy configs listen
// on every interface) can hold open, as the HTTP frontend's caps do for
// clients.
const (
	opsMaxConns      = 256
	opsMaxConnsPerIP = 32
)

// opsListener closes, counts and logs connections over its caps as soon
// as they are accepted, like the HTTP frontend. Safe for concurrent use.
type opsListener struct {
	net.Listener
	maxConns, maxPerIP int
	refused            *prometheus.CounterVec
	log                *zap.Logger
	refuseLog          *ratelog.Limiter

	mu    sync.Mutex
	open  int
	perIP map[netip.Addr]int
}

func newOpsListener(ln net.Listener, maxConns, maxPerIP int, reg prometheus.Registerer, log *zap.Logger) (*opsListener, error) {
	l := &opsListener{
		Listener:  ln,
		maxConns:  maxConns,
		maxPerIP:  maxPerIP,
		log:       log,
		refuseLog: ratelog.New(10 * time.Second),
		perIP:     map[netip.Addr]int{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "ops",
			Name:      "connections_refused_total",
			Help:      "Connections to the operations listener closed unanswered at a cap, by cap.",
		}, []string{"reason"}),
	}
	for _, r := range []string{frontends.RefusedMaxConnections, frontends.RefusedMaxConnectionsPerIP} {
		l.refused.WithLabelValues(r)
	}
	if err := reg.Register(l.refused); err != nil {
		return nil, err
	}
	return l, nil
}

// Accept returns the next connection within the caps.
func (l *opsListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var src netip.Addr
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			src = frontends.Source(ta.AddrPort().Addr())
		}
		if reason := l.admit(src); reason != "" {
			l.refused.WithLabelValues(reason).Inc()
			if n, ok := l.refuseLog.Allow(); ok {
				l.log.Warn("operations listener: connections refused at their cap", zap.String("cap", reason),
					zap.Stringer("source", src), zap.Uint64("refused_since_last_log", n))
			}
			_ = c.Close()
			continue
		}
		return &opsConn{Conn: c, l: l, src: src}, nil
	}
}

// admit takes a place for a connection from src, or returns the cap that
// refuses it.
func (l *opsListener) admit(src netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.maxConns {
		return frontends.RefusedMaxConnections
	}
	if l.perIP[src] >= l.maxPerIP {
		return frontends.RefusedMaxConnectionsPerIP
	}
	l.open++
	l.perIP[src]++
	return ""
}

func (l *opsListener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perIP[src]--; l.perIP[src] <= 0 {
		delete(l.perIP, src)
	}
}

// opsConn gives its place back once, however often it is closed.
type opsConn struct {
	net.Conn
	l    *opsListener
	src  netip.Addr
	once sync.Once
}

func (c *opsConn) Close() error {
	c.once.Do(func() { c.l.release(c.src) })
	return c.Conn.Close()
}
