package http

import (
	"fmt"
	"github.com/karuta-tracker/karuta/frontends"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is the HTTP frontend's configuration, under the `frontends.http`
// key.
type Config struct {
	// Addr is the host:port to listen on. An empty Addr disables the HTTP
	// frontend. "[::]:6969" and ":6969" listen on IPv4 and IPv6 alike.
	Addr string `yaml:"addr"`
	// TLSCert and TLSKey are PEM files; when both are set the frontend
	// serves HTTPS instead of HTTP.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TrustedProxies lists the IPs and CIDRs whose RealIPHeader is believed.
	// Requests from anyone else are attributed to their TCP peer address,
	// whatever headers they carry.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// RealIPHeader names the header a trusted proxy puts the client's
	// address in, such as X-Forwarded-For or X-Real-IP.
	RealIPHeader string `yaml:"real_ip_header"`
	// ReadTimeout bounds the time to receive one request's line and headers
	// (and the TLS handshake of a new connection).
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds the time to send buffered responses.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout is how long a keep-alive connection may wait for its next
	// request before it is closed. Clients announce every half hour, so a
	// connection kept longer than a burst of requests (a scrape after an
	// announce, a proxy's reuse) only holds memory and a descriptor.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnections caps the connections open at once; more are closed
	// as soon as they are accepted, and counted. It keeps idle or slow
	// connections from exhausting memory and file descriptors (about 20 KiB
	// and one descriptor each).
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP caps the connections open at once from one
	// address (an IPv6 /64), so one source cannot take the whole of
	// MaxConnections. Trusted proxies are exempt: they carry many clients.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// MaxRequestBytes bounds a request's line and headers together. Longer
	// requests are answered with a "request too large" failure and closed.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// AnnounceRoutes and ScrapeRoutes are the paths answered as announces
	// and scrapes. A segment written {name} matches any non-empty segment
	// and hands its value to the hooks as route parameter name, for example
	// /announce/{passkey}.
	AnnounceRoutes []string `yaml:"announce_routes"`
	ScrapeRoutes   []string `yaml:"scrape_routes"`
	// FullScrape answers a scrape without info_hash with every swarm (of
	// the whole cluster), gzipped when the client accepts it. Off by
	// default: the answer is as large as the tracker, and lists what it
	// tracks to anyone who asks.
	FullScrape bool `yaml:"full_scrape"`
	// FullScrapeInterval is the least time between two full scrapes this
	// node answers; one asked for sooner, or while another is being sent,
	// is refused with a failure reason and counted.
	FullScrapeInterval time.Duration `yaml:"full_scrape_interval"`
}

// DefaultConfig returns the configuration used when the config file says
// nothing: plain HTTP on port 6969, no proxies.
func DefaultConfig() Config {
	return Config{
		Addr:                ":6969",
		RealIPHeader:        "X-Forwarded-For",
		ReadTimeout:         5 * time.Second,
		WriteTimeout:        5 * time.Second,
		IdleTimeout:         15 * time.Second,
		MaxRequestBytes:     8192,
		MaxConnections:      10_000,
		MaxConnectionsPerIP: 256,
		AnnounceRoutes:      []string{"/announce"},
		ScrapeRoutes:        []string{"/scrape"},
		FullScrapeInterval:  10 * time.Second,
	}
}

// Limits enforced by Validate. The request-size floor leaves room for the
// longest ordinary announce (two 60-byte escaped hashes plus the rest); the
// ceiling keeps per-connection buffers small.
const (
	minRequestBytes = 512
	maxRequestBytes = 1 << 20
	minTimeout      = time.Millisecond
	maxTimeout      = time.Hour
	// maxConnections is far above what one process can hold open (file
	// descriptors), so it only catches typing errors.
	maxConnections = 10_000_000
)

// Validate reports the first bad value, naming its key.
func (c Config) Validate() error {
	if c.Addr != "" {
		if err := validateAddr(c.Addr); err != nil {
			return err
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		if c.TLSCert == "" {
			return fmt.Errorf("tls_cert: empty but tls_key is %q; want both set (HTTPS) or neither (HTTP)", c.TLSKey)
		}
		return fmt.Errorf("tls_key: empty but tls_cert is %q; want both set (HTTPS) or neither (HTTP)", c.TLSCert)
	}
	for i, s := range c.TrustedProxies {
		if _, ok := parsePrefix(s); !ok {
			return fmt.Errorf("trusted_proxies[%d]: %q is not an IP or CIDR", i, s)
		}
	}
	if c.RealIPHeader == "" && len(c.TrustedProxies) > 0 {
		return fmt.Errorf("real_ip_header: empty but trusted_proxies is set; want a header name such as X-Forwarded-For")
	}
	if c.RealIPHeader != "" && !isToken(c.RealIPHeader) {
		return fmt.Errorf("real_ip_header: %q is not a valid header name; want letters, digits and -", c.RealIPHeader)
	}
	switch strings.ToLower(c.RealIPHeader) {
	case "host", "connection", "content-length", "transfer-encoding", "authorization":
		// The request reader gives these their HTTP meaning first.
		return fmt.Errorf("real_ip_header: %q is an HTTP header with another meaning; want a header such as X-Forwarded-For or X-Real-IP", c.RealIPHeader)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"read_timeout", c.ReadTimeout}, {"write_timeout", c.WriteTimeout}, {"idle_timeout", c.IdleTimeout}} {
		if d.v < minTimeout || d.v > maxTimeout {
			return fmt.Errorf("%s: %s is out of range; want %s to %s", d.key, d.v, minTimeout, maxTimeout)
		}
	}
	if c.MaxConnections < 1 || c.MaxConnections > maxConnections {
		return fmt.Errorf("max_connections: %d is out of range; want 1 to %d", c.MaxConnections, maxConnections)
	}
	if c.MaxConnectionsPerIP < 1 || c.MaxConnectionsPerIP > c.MaxConnections {
		return fmt.Errorf("max_connections_per_ip: %d is out of range; want 1 to max_connections (%d)", c.MaxConnectionsPerIP, c.MaxConnections)
	}
	if c.MaxRequestBytes < minRequestBytes || c.MaxRequestBytes > maxRequestBytes {
		return fmt.Errorf("max_request_bytes: %d is out of range; want %d to %d", c.MaxRequestBytes, minRequestBytes, maxRequestBytes)
	}
	if c.FullScrapeInterval < time.Second || c.FullScrapeInterval > 24*time.Hour {
		return fmt.Errorf("full_scrape_interval: %s is out of range; want 1s to 24h", c.FullScrapeInterval)
	}
	if len(c.AnnounceRoutes) == 0 {
		return fmt.Errorf("announce_routes: empty; want at least one path such as /announce")
	}
	_, err := newRouter(c.AnnounceRoutes, c.ScrapeRoutes)
	return err
}

func validateAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("addr: %q is not host:port; want for example :6969 or [::]:6969", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || port != strconv.FormatUint(n, 10) {
		return fmt.Errorf("addr: %q has port %q; want a number from 0 to 65535", addr, port)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("addr: %q has host %q; want an IP, a host name or nothing", addr, host)
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, bool) { return frontends.ParsePrefix(s) }

// isToken reports whether s is an RFC 9110 token, the syntax of header names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChar[s[i]] {
			return false
		}
	}
	return true
}
