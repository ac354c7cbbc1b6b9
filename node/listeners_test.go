package node

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestListenersMustNotShareAPort(t *testing.T) {
	const keys = "cluster: {secret_keys: [" + `"a2FydXRhLWV4YW1wbGUta2V5LTMyLWJ5dGVzLWxvbmc="` + "]"
	tests := []struct {
		name string
		in   string
		want []string // substrings of the error; none: accepted
	}{
		{"http and metrics on one port", "frontends: {http: {addr: ':6880'}}\n",
			[]string{"metrics.addr", `"127.0.0.1:6880"`, "frontends.http.addr", `":6880"`, "TCP port 6880"}},
		{"metrics on the http port, same host", "frontends: {http: {addr: '127.0.0.1:6969'}}\nmetrics: {addr: '127.0.0.1:6969'}\n",
			[]string{"metrics.addr", "frontends.http.addr", "TCP port 6969"}},
		{"IPv6 wildcard covers IPv4", "frontends: {http: {addr: '[::]:7000'}}\nmetrics: {addr: '127.0.0.1:7000'}\n",
			[]string{"metrics.addr", "frontends.http.addr", "TCP port 7000"}},
		{"udp frontend on the gossip port", "frontends: {udp: {addr: ':7946'}}\n" + keys + ", bind: '10.0.0.1:7946'}\n",
			[]string{"cluster.bind", "frontends.udp.addr", "UDP port 7946"}},
		{"derived data port on metrics", "metrics: {addr: '127.0.0.1:7947'}\n" + keys + ", bind: '127.0.0.1:7946'}\n",
			[]string{"cluster.data_bind (cluster.bind's port + 1)", "metrics.addr", "TCP port 7947"}},
		{"explicit data_bind on http", keys + ", bind: '127.0.0.1:7946', data_bind: '127.0.0.1:6969'}\n",
			[]string{"cluster.data_bind", `"127.0.0.1:6969"`, "frontends.http.addr"}},

		{"webtorrent on the http port", "frontends: {http: {addr: '127.0.0.1:6969'}, webtorrent: {addr: '127.0.0.1:6969'}}\n",
			[]string{"frontends.webtorrent.addr", "frontends.http.addr", "TCP port 6969"}},

		{"defaults", "", nil},
		{"http and udp share a number, not a protocol", "frontends: {http: {addr: ':7000'}, udp: {addr: ':7000'}}\n", nil},
		{"different hosts", "frontends: {http: {addr: '127.0.0.2:6880'}}\n", nil},
		{"IPv4 wildcard leaves IPv6 alone", "frontends: {http: {addr: '0.0.0.0:7000'}}\nmetrics: {addr: '[::1]:7000'}\n", nil},
		{"port 0 twice", "frontends: {http: {addr: '127.0.0.1:0'}}\nmetrics: {addr: '127.0.0.1:0'}\n", nil},
		{"the cluster docs' ports", keys + ", bind: '127.0.0.1:7941'}\nmetrics: {addr: '127.0.0.1:6881'}\nfrontends: {http: {addr: '127.0.0.1:6961'}, udp: {addr: '127.0.0.1:6961'}}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Parse refused a config without clashes: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted listeners sharing a port:\n%s", tt.in)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestReachableFrom(t *testing.T) {
	for addr, want := range map[string]string{
		"[::]:6969":       "any host: every interface",
		"0.0.0.0:6969":    "any host: every interface",
		":6969":           "any host: every interface",
		"127.0.0.1:6880":  "this host only (loopback)",
		"127.0.1.3:6880":  "this host only (loopback)",
		"[::1]:6880":      "this host only (loopback)",
		"10.0.0.5:6969":   "the hosts that reach 10.0.0.5",
		"tracker.lan:696": "the hosts that reach tracker.lan",
	} {
		if got := reachableFrom(addr); got != want {
			t.Errorf("reachableFrom(%q) = %q, want %q", addr, got, want)
		}
	}
}

// TestStartLogsEveryListener checks that the start log names each
// listener, where it is bound and who can reach it: a new operator reads
// there whether the tracker is public.
func TestStartLogsEveryListener(t *testing.T) {
	infos, logs := observer.New(zap.InfoLevel)
	cfg := Default()
	cfg.Node.Name = "listeners"
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "[::]:0", "127.0.0.1:0"
	n, err := New(cfg, Options{Log: zap.New(infos)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Shutdown(t.Context()) }()
	got := map[string]string{}
	for _, e := range logs.FilterMessage("listening").All() {
		f := e.ContextMap()
		got[f["listener"].(string)] = f["addr"].(string) + " " + f["reachable_from"].(string)
	}
	a := n.Addrs()
	want := map[string]string{
		"http frontend": a.HTTP + " this host only (loopback)",
		"udp frontend":  a.UDP + " any host: every interface",
		"operations (metrics, health, /cluster; no authentication)": a.Metrics + " this host only (loopback)",
	}
	if len(got) != len(want) {
		t.Errorf("logged %d listeners, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("listener %q logged as %q, want %q", k, got[k], v)
		}
	}
}
