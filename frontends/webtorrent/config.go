package webtorrent

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/karuta-tracker/karuta/frontends"
)

// Config is the WebTorrent frontend's configuration, under the
// `frontends.webtorrent` key. Every limit is on by default: a WebSocket is
// cheap for a browser to open and keep, so each thing an outsider can make
// the node hold (sockets, queued messages, offers waiting for an answer)
// has a cap, and each refusal is counted.
type Config struct {
	// Addr is the host:port to listen on. Empty (the default) disables
	// WebTorrent.
	Addr string `yaml:"addr"`
	// TLSCert and TLSKey are PEM files; with both the frontend serves
	// wss:// instead of ws://. They may be the HTTP frontend's.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TrustedProxies lists the IPs and CIDRs (a TLS-terminating reverse
	// proxy in front of wss://) whose RealIPHeader is believed; the
	// client's address is then the one the header gives, for the hooks
	// and rate limits, and the proxy is exempt from the per-source cap.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// RealIPHeader names the header a trusted proxy puts the client's
	// address in.
	RealIPHeader string `yaml:"real_ip_header"`
	// Routes are the paths a client may open its socket at. A segment
	// written {name} matches any non-empty segment and hands its value to
	// the hooks as a route parameter (/{passkey}/announce); the query
	// string reaches them too (?jwt=…).
	Routes []string `yaml:"routes"`
	// MaxConnections caps the sockets open at once; more are closed as
	// soon as they are accepted, and counted.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP caps the sockets open from one address (an IPv6
	// /64), so one source cannot take the whole of MaxConnections.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// HandshakeTimeout bounds the time from accepting a connection to the
	// end of its WebSocket upgrade (and TLS handshake), so half-open
	// sockets are closed.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// IdleTimeout closes a socket that has sent nothing, not even a pong,
	// for this long. The frontend pings a socket idle for half of it, and
	// browsers answer pings on their own.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout closes a socket that does not take what is written to
	// it within this time.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxMessageBytes bounds one message (all its frames together). A
	// WebTorrent announce with ten offers is 5 to 20 KiB.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MessagesPerSecond and MessageBurst bound the messages one socket may
	// send: a token bucket refilled at MessagesPerSecond holding at most
	// MessageBurst. A socket over it is closed and counted.
	MessagesPerSecond float64 `yaml:"messages_per_second"`
	MessageBurst      int     `yaml:"message_burst"`
	// MaxOffers is the most offers of one announce relayed; the rest are
	// dropped and counted. WebTorrent sends up to 10.
	MaxOffers int `yaml:"max_offers"`
	// MaxOutstandingOffers caps, per socket, the offers it made that wait
	// for an answer and, separately, the offers relayed to it that it has
	// not answered. Offers past the cap are dropped and counted.
	MaxOutstandingOffers int `yaml:"max_outstanding_offers"`
	// OfferTimeout is how long an offer waits for its answer; a later
	// answer is not relayed.
	OfferTimeout time.Duration `yaml:"offer_timeout"`
	// MaxSwarmsPerConnection caps the torrents one socket announces at once.
	MaxSwarmsPerConnection int `yaml:"max_swarms_per_connection"`
	// SendQueue is how many messages may wait to be written to one socket.
	// A socket whose queue fills (a reader slower than what it is sent) is
	// closed and counted, never buffered without bound.
	SendQueue int `yaml:"send_queue"`
	// FullScrape answers a scrape without info_hash with every swarm, at
	// most once per FullScrapeInterval per node. Off by default.
	FullScrape         bool          `yaml:"full_scrape"`
	FullScrapeInterval time.Duration `yaml:"full_scrape_interval"`
}

// DefaultConfig returns the configuration used when the config file says
// nothing: disabled, with every limit set.
func DefaultConfig() Config {
	return Config{
		Routes:                 []string{"/", "/announce"},
		RealIPHeader:           "X-Forwarded-For",
		MaxConnections:         100_000,
		MaxConnectionsPerIP:    256,
		HandshakeTimeout:       5 * time.Second,
		IdleTimeout:            2 * time.Minute,
		WriteTimeout:           10 * time.Second,
		MaxMessageBytes:        64 << 10,
		MessagesPerSecond:      20,
		MessageBurst:           100,
		MaxOffers:              10,
		MaxOutstandingOffers:   100,
		OfferTimeout:           time.Minute,
		MaxSwarmsPerConnection: 1000,
		SendQueue:              256,
		FullScrapeInterval:     10 * time.Second,
	}
}

// Validate reports the first bad value with its key.
func (c Config) Validate() error {
	if c.Addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("addr: %q is not host:port: %w", c.Addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("addr: %q has port %q; want 0 to 65535", c.Addr, port)
	}
	_ = host
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls_cert, tls_key: give both or neither")
	}
	for i, p := range c.TrustedProxies {
		if _, ok := frontends.ParsePrefix(p); !ok {
			return fmt.Errorf("trusted_proxies[%d]: %q is not an IP or CIDR", i, p)
		}
	}
	if c.RealIPHeader == "" && len(c.TrustedProxies) > 0 {
		return errors.New("real_ip_header: empty but trusted_proxies is set; want a header name such as X-Forwarded-For")
	}
	if len(c.Routes) == 0 {
		return errors.New("routes: empty; want at least one path such as /announce")
	}
	for _, r := range c.Routes {
		if _, err := compileRoute(r); err != nil {
			return fmt.Errorf("routes: %w", err)
		}
	}
	ints := []struct {
		key      string
		val, min int
		max      int
	}{
		{"max_connections", c.MaxConnections, 1, 10_000_000},
		{"max_connections_per_ip", c.MaxConnectionsPerIP, 1, 10_000_000},
		{"max_message_bytes", c.MaxMessageBytes, 1024, 1 << 20},
		{"message_burst", c.MessageBurst, 1, 100_000},
		{"max_offers", c.MaxOffers, 0, 100},
		{"max_outstanding_offers", c.MaxOutstandingOffers, 1, 10_000},
		{"max_swarms_per_connection", c.MaxSwarmsPerConnection, 1, 100_000},
		{"send_queue", c.SendQueue, 1, 100_000},
	}
	for _, f := range ints {
		if f.val < f.min || f.val > f.max {
			return fmt.Errorf("%s: %d is out of range; want %d to %d", f.key, f.val, f.min, f.max)
		}
	}
	if c.MessagesPerSecond <= 0 || c.MessagesPerSecond > 1e6 {
		return fmt.Errorf("messages_per_second: %v is out of range; want more than 0, at most 1000000", c.MessagesPerSecond)
	}
	durs := []struct {
		key string
		val time.Duration
	}{
		{"handshake_timeout", c.HandshakeTimeout},
		{"idle_timeout", c.IdleTimeout},
		{"write_timeout", c.WriteTimeout},
		{"offer_timeout", c.OfferTimeout},
		{"full_scrape_interval", c.FullScrapeInterval},
	}
	for _, d := range durs {
		if d.val < 100*time.Millisecond || d.val > 24*time.Hour {
			return fmt.Errorf("%s: %s is out of range; want 100ms to 24h", d.key, d.val)
		}
	}
	return nil
}

// route is one compiled socket path: its segments, and for each the name
// of its parameter if it is a {name} segment, "" if it is literal.
type route struct {
	segs  []string
	names []string
}

func compileRoute(p string) (route, error) {
	var rt route
	if !strings.HasPrefix(p, "/") {
		return rt, fmt.Errorf("%q is not a path; want one starting with /", p)
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") && len(seg) > 2 {
			rt.segs = append(rt.segs, "")
			rt.names = append(rt.names, seg[1:len(seg)-1])
			continue
		}
		if strings.ContainsAny(seg, "{}") {
			return rt, fmt.Errorf("%q: segment %q; want a literal or {name}", p, seg)
		}
		rt.segs = append(rt.segs, seg)
		rt.names = append(rt.names, "")
	}
	return rt, nil
}
