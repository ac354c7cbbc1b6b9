package wsload

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/node"
)

func TestValidateLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"ws://127.0.0.1:8000/announce", true},
		{"ws://127.1.2.3:8000/", true},
		{"ws://[::1]:8000/announce", true},
		{"ws://192.0.2.1:8000/announce", false},
		{"ws://tracker.example.org:8000/announce", false},
		{"ws://127.0.0.1/announce", false},
	} {
		cfg := Default()
		cfg.URLs = []string{tc.url}
		if err := cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate = %v; want ok %v", tc.url, err, tc.ok)
		}
	}
}

// A short run of each mode against a real node measures something.
func TestRunAgainstANode(t *testing.T) {
	cfg := node.Default()
	cfg.Node.Name = "wsload"
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "", "", ""
	cfg.Frontends.WebTorrent.Addr = "127.0.0.1:0"
	cfg.Frontends.WebTorrent.MaxConnectionsPerIP = 1000
	cfg.RateLimit.PerIP.Rate = 0 // the bench sends far more than a browser
	n, err := node.New(cfg, node.Options{Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown(context.Background()) })
	url := "ws://" + n.Addrs().WebTorrent + "/announce"

	relay := Default()
	relay.URLs, relay.Sockets, relay.Swarms, relay.Offers = []string{url}, 40, 2, 5
	relay.Warmup, relay.Duration, relay.PIDs = 100*time.Millisecond, 500*time.Millisecond, []int{os.Getpid()}
	res, err := Run(t.Context(), relay, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Open != 40 || res.OffersIn == 0 || res.AnswersIn == 0 || res.TrackerCPU <= 0 || res.RoundTripP50 <= 0 {
		t.Errorf("relay run measured %+v", res)
	}

	idle := Default()
	idle.URLs, idle.Mode, idle.Sockets, idle.Swarms, idle.Settle, idle.PIDs = []string{url}, ModeIdle, 50, 5, 10*time.Millisecond, []int{os.Getpid()}
	res, err = Run(t.Context(), idle, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Open != 50 || res.RSSAfter == 0 {
		t.Errorf("idle run measured %+v", res)
	}
}

// A run the tracker refused in part is an error that names the reason,
// not a slow measurement: here each address may announce twice.
func TestRunReportsRefusals(t *testing.T) {
	cfg := node.Default()
	cfg.Node.Name = "wsload"
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "", "", ""
	cfg.Frontends.WebTorrent.Addr = "127.0.0.1:0"
	cfg.Frontends.WebTorrent.MaxConnectionsPerIP = 1000
	cfg.RateLimit.PerIP.Rate, cfg.RateLimit.PerIP.Burst = 0.001, 2
	n, err := node.New(cfg, node.Options{Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown(context.Background()) })

	relay := Default()
	relay.URLs, relay.Sockets, relay.Swarms, relay.Offers = []string{"ws://" + n.Addrs().WebTorrent + "/announce"}, 20, 2, 5
	relay.Sources = 1
	relay.Warmup, relay.Duration, relay.PIDs = 100*time.Millisecond, 300*time.Millisecond, []int{os.Getpid()}
	res, err := Run(t.Context(), relay, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Run = %v; want an error naming the refusals", err)
	}
	if res == nil || res.Refused["rate limit exceeded"] == 0 {
		t.Errorf("refusals counted %+v; want rate limit exceeded", res)
	}
}
