package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/types/infohash"
)

// startRateLimitNode runs a node whose rate_limit hook gives each address 3
// requests and each /24 5, with refills too slow to matter during a test.
// The HTTP frontend trusts X-Forwarded-For from loopback, so one test
// process can speak for many addresses.
func startRateLimitNode(t *testing.T) *Node {
	t.Helper()
	parsed, err := Parse([]byte(`
hooks:
  - name: rate_limit
    options:
      per_ip: {rate: 0.001, burst: 3}
      per_subnet: {rate: 0.001, burst: 5}
      ipv4_prefix: 24
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return startNode(t, "127.0.0.1", func(c *Config) {
		c.Hooks = parsed.Hooks
		c.Frontends.HTTP.TrustedProxies = []string{"127.0.0.1"}
	})
}

// rateLimitHTTP announces over HTTP on behalf of client (sent as
// X-Forwarded-For, unless empty) and returns the bencoded failure reason,
// or "".
func rateLimitHTTP(t *testing.T, addr, client string) string {
	t.Helper()
	return rateLimitHTTPFrom(t, http.DefaultClient, addr, client)
}

// rateLimitHTTPFrom is rateLimitHTTP through the HTTP client hc.
func rateLimitHTTPFrom(t *testing.T, hc *http.Client, addr, client string) string {
	t.Helper()
	q := url.Values{
		"info_hash": {string(make([]byte, 20))},
		"peer_id":   {"-KT0001-ratelimit000"},
		"port":      {"6881"},
		"left":      {"0"},
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/announce?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if client != "" {
		req.Header.Set("X-Forwarded-For", client)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET as %s: %v", client, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	_, after, ok := strings.Cut(string(body), "14:failure reason")
	if !ok {
		return ""
	}
	var n int
	if _, err := fmt.Sscanf(after, "%d:", &n); err != nil {
		t.Fatalf("bad failure reason in %q", body)
	}
	_, reason, _ := strings.Cut(after, ":")
	return reason[:n]
}

func TestRateLimitFrontends(t *testing.T) {
	n := startRateLimitNode(t)
	a := n.Addrs()

	t.Run("http", func(t *testing.T) {
		steps := []struct {
			client, want string
		}{
			{"10.1.2.3", ""},
			{"10.1.2.3", ""},
			{"10.1.2.3", ""},
			{"10.1.2.3", "rate limit exceeded"}, // fourth from one address
			{"10.1.2.4", ""},
			{"10.1.2.4", ""},                    // fifth from 10.1.2.0/24
			{"10.1.2.5", "rate limit exceeded"}, // sixth from the /24
			{"10.1.3.1", ""},                    // another /24
		}
		for i, s := range steps {
			if got := rateLimitHTTP(t, a.HTTP, s.client); got != s.want {
				t.Errorf("step %d as %s: failure reason %q, want %q", i, s.client, got, s.want)
			}
		}
	})

	t.Run("udp", func(t *testing.T) {
		cl, err := tracker.NewClient("udp://"+a.UDP, tracker.NewClientOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		announce := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := cl.Announce(ctx, tracker.AnnounceRequest{InfoHash: infohash.T{8}, PeerId: peerID('l'), Port: 6881, NumWant: -1}, trhttp.AnnounceOpt{})
			return err
		}
		for i := range 3 {
			if err := announce(); err != nil {
				t.Fatalf("announce %d from 127.0.0.1: %v", i+1, err)
			}
		}
		if err := announce(); err == nil || !strings.Contains(err.Error(), "rate limit exceeded") {
			t.Fatalf("fourth announce from 127.0.0.1: %v, want a rate limit exceeded error packet", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cl.Scrape(ctx, []infohash.T{{8}}); err == nil || !strings.Contains(err.Error(), "rate limit exceeded") {
			t.Errorf("scrape from a limited address: %v, want refused", err)
		}
	})

	resp, err := http.Get("http://" + a.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`karuta_hook_rate_limited_total{scope="ip"} 3`, // 1 HTTP, 2 UDP
		`karuta_hook_rate_limited_total{scope="subnet"} 1`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestRateLimitConfigErrors(t *testing.T) {
	tests := []struct{ doc, want string }{
		{"hooks: [{name: rate_limit, options: {per_ip: {rate: -1}}}]", "config: hooks[0].options.per_ip.rate: -1 is out of range"},
		{"hooks: [{name: rate_limit, options: {per_subnet: {burst: 0}}}]", "config: hooks[0].options.per_subnet.burst: 0 is out of range"},
		{"hooks: [{name: rate_limit, options: {per_ip: {rate: 0}, per_subnet: {rate: 0}}}]", "config: hooks[0].options.per_ip: both"},
		{"hooks: [{name: rate_limit, options: {ipv6_prefix: 129}}]", "config: hooks[0].options.ipv6_prefix: 129 is out of range; want 1 to 128"},
		{"hooks: [{name: rate_limit, options: {max_entries: 5}}]", "config: hooks[0].options.max_entries: 5 is out of range"},
		{"hooks: [{name: rate_limit, options: {per_ip: {rate: 1, bust: 2}}}]", "config: hooks[0].options.per_ip.bust: line 1: unknown key"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Parse(%s) = %v, want an error starting %q", tt.doc, err, tt.want)
		}
	}
	// Turning one limit off keeps the other's defaults.
	cfg, err := Parse([]byte("hooks: [{name: rate_limit, options: {per_subnet: {rate: 0}}}]"))
	if err != nil {
		t.Errorf("per_subnet off: %v", err)
	} else if len(cfg.Hooks) != 1 {
		t.Errorf("parsed %d hooks, want 1", len(cfg.Hooks))
	}
}
