package http

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	c := DefaultConfig()
	c.Addr = ""
	if err := c.Validate(); err != nil {
		t.Errorf("an empty addr disables the frontend and must validate; got %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		// wantPrefix is the start of the error; wantValue must appear in it.
		wantPrefix, wantValue string
	}{
		{"addr no port", func(c *Config) { c.Addr = "localhost" }, "addr:", `"localhost"`},
		{"addr bad port", func(c *Config) { c.Addr = ":http" }, "addr:", `"http"`},
		{"addr port too big", func(c *Config) { c.Addr = ":65536" }, "addr:", `"65536"`},
		{"cert without key", func(c *Config) { c.TLSCert = "c.pem" }, "tls_key:", `"c.pem"`},
		{"key without cert", func(c *Config) { c.TLSKey = "k.pem" }, "tls_cert:", `"k.pem"`},
		{"proxy bad cidr", func(c *Config) { c.TrustedProxies = []string{"10.0.0.1", "::1", "10.0.0.0/33"} }, "trusted_proxies[2]:", `"10.0.0.0/33" is not an IP or CIDR`},
		{"proxy name", func(c *Config) { c.TrustedProxies = []string{"proxy.example"} }, "trusted_proxies[0]:", `"proxy.example"`},
		{"proxy zone", func(c *Config) { c.TrustedProxies = []string{"fe80::1%eth0"} }, "trusted_proxies[0]:", `"fe80::1%eth0"`},
		{"proxies without header", func(c *Config) { c.TrustedProxies = []string{"10.0.0.1"}; c.RealIPHeader = "" }, "real_ip_header:", "trusted_proxies"},
		{"bad header", func(c *Config) { c.RealIPHeader = "X Forwarded" }, "real_ip_header:", `"X Forwarded"`},
		{"framing header", func(c *Config) { c.RealIPHeader = "Content-Length" }, "real_ip_header:", `"Content-Length"`},
		{"read timeout", func(c *Config) { c.ReadTimeout = 0 }, "read_timeout:", "0s"},
		{"write timeout", func(c *Config) { c.WriteTimeout = -time.Second }, "write_timeout:", "-1s"},
		{"idle timeout", func(c *Config) { c.IdleTimeout = 2 * time.Hour }, "idle_timeout:", "2h0m0s"},
		{"negative connections", func(c *Config) { c.MaxConnections = -1 }, "max_connections:", "-1"},
		{"per-IP cap zero", func(c *Config) { c.MaxConnectionsPerIP = 0 }, "max_connections_per_ip:", "0"},
		{"per-IP cap above the global one", func(c *Config) { c.MaxConnections, c.MaxConnectionsPerIP = 100, 101 }, "max_connections_per_ip:", "max_connections (100)"},
		{"request bytes small", func(c *Config) { c.MaxRequestBytes = 100 }, "max_request_bytes:", "100"},
		{"request bytes big", func(c *Config) { c.MaxRequestBytes = 1 << 30 }, "max_request_bytes:", "1073741824"},
		{"no announce route", func(c *Config) { c.AnnounceRoutes = nil }, "announce_routes:", "at least one"},
		{"full scrape interval short", func(c *Config) { c.FullScrapeInterval = 0 }, "full_scrape_interval:", "want 1s to 24h"},
		{"full scrape interval long", func(c *Config) { c.FullScrapeInterval = 25 * time.Hour }, "full_scrape_interval:", "25h0m0s"},
		{"route no slash", func(c *Config) { c.AnnounceRoutes = []string{"/announce", "announce"} }, "announce_routes[1]:", `"announce"`},
		{"route bad char", func(c *Config) { c.ScrapeRoutes = []string{"/scr ape"} }, "scrape_routes[0]:", `"/scr ape"`},
		{"route query", func(c *Config) { c.ScrapeRoutes = []string{"/scrape?x"} }, "scrape_routes[0]:", `"/scrape?x"`},
		{"route half param", func(c *Config) { c.AnnounceRoutes = []string{"/a/{key"} }, "announce_routes[0]:", `"/a/{key"`},
		{"route bad param name", func(c *Config) { c.AnnounceRoutes = []string{"/a/{k.y}"} }, "announce_routes[0]:", `"k.y"`},
		{"route repeated param", func(c *Config) { c.AnnounceRoutes = []string{"/a/{k}/{k}"} }, "announce_routes[0]:", `"k"`},
		{"route duplicate", func(c *Config) { c.ScrapeRoutes = []string{"/announce"} }, "scrape_routes[0]:", "announce_routes[0]"},
		{"route same shape", func(c *Config) { c.AnnounceRoutes = []string{"/a/{x}"}; c.ScrapeRoutes = []string{"/a/{y}"} }, "scrape_routes[0]:", `"/a/{y}"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate() = nil, want an error starting with %q", tt.wantPrefix)
			}
			if !strings.HasPrefix(err.Error(), tt.wantPrefix) || !strings.Contains(err.Error(), tt.wantValue) {
				t.Errorf("Validate() = %q; want it to start with %q and mention %q", err, tt.wantPrefix, tt.wantValue)
			}
		})
	}
}

func TestConfigValidateAccepts(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"dual stack", func(c *Config) { c.Addr = "[::]:6969" }},
		{"port zero", func(c *Config) { c.Addr = "127.0.0.1:0" }},
		{"tls", func(c *Config) { c.TLSCert, c.TLSKey = "c.pem", "k.pem" }},
		{"proxies", func(c *Config) {
			c.TrustedProxies = []string{"10.0.0.1", "10.1.2.3/8", "::1", "2001:db8::/32", "::ffff:10.0.0.0/104"}
		}},
		{"no scrape", func(c *Config) { c.ScrapeRoutes = nil }},
		{"named routes", func(c *Config) {
			c.AnnounceRoutes = []string{"/announce", "/{passkey}/announce", "/a/{user}/{key}"}
			c.ScrapeRoutes = []string{"/scrape", "/{passkey}/scrape"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.1", "10.0.0.1/32"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"::1", "::1/128"},
		{"::ffff:10.0.0.1", "10.0.0.1/32"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
	}
	for _, tt := range tests {
		p, ok := parsePrefix(tt.in)
		if !ok || p.String() != tt.want {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", tt.in, p, ok, tt.want)
		}
	}
	for _, in := range []string{"", "x", "10.0.0.0/33", "::ffff:0:0/64", "fe80::1%eth0"} {
		if p, ok := parsePrefix(in); ok {
			t.Errorf("parsePrefix(%q) = %v, want failure", in, p)
		}
	}
}
