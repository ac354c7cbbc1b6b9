package main

import (
	"bytes"
	"encoding/base64"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut, make(chan os.Signal))
	return code, out.String(), errOut.String()
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, _ := runCLI(t, args...)
		if code != exitOK || out != "karuta dev\n" {
			t.Errorf("karuta %s = %d %q", strings.Join(args, " "), code, out)
		}
	}
}

// TestHelp checks that the ways people ask for help print the commands
// to stdout and exit 0, for karuta and its commands.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"-help"}} {
		code, out, errOut := runCLI(t, args...)
		if code != exitOK || !strings.Contains(out, "karuta cluster status") || !strings.Contains(out, "karuta config check FILE") || errOut != "" {
			t.Errorf("karuta %s = %d, stdout %q, stderr %q; want 0 and the commands on stdout", strings.Join(args, " "), code, out, errOut)
		}
	}
	for _, tc := range []struct {
		args []string
		want string // in stdout or stderr (flag's own help goes to stderr)
	}{
		{[]string{"serve", "-h"}, "-config"},
		{[]string{"config", "--help"}, "karuta config check FILE"},
		{[]string{"cluster", "-h"}, "karuta cluster status"},
		{[]string{"cluster", "status", "-h"}, "-addr"},
		{[]string{"cluster", "tls", "--help"}, "karuta cluster tls ca"},
		{[]string{"cluster", "tls", "ca", "-h"}, "-days"},
		{[]string{"bench", "-h"}, "-url"},
	} {
		code, out, errOut := runCLI(t, tc.args...)
		if code != exitOK || !strings.Contains(out+errOut, tc.want) {
			t.Errorf("karuta %s = %d, output %q; want 0 and %q", strings.Join(tc.args, " "), code, out+errOut, tc.want)
		}
	}
	// A flag that is not help still belongs to serve, and a wrong one is
	// a usage error.
	if code, _, errOut := runCLI(t, "--frobnicate"); code != exitUsage || !strings.Contains(errOut, "frobnicate") {
		t.Errorf("karuta --frobnicate = %d %q; want %d", code, errOut, exitUsage)
	}
}

func TestClusterKeygen(t *testing.T) {
	code, out, errOut := runCLI(t, "cluster", "keygen")
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if code != exitOK || err != nil || len(key) != 32 {
		t.Fatalf("cluster keygen = %d %q %q; want a base64 key of 32 bytes", code, out, errOut)
	}
	_, again, _ := runCLI(t, "cluster", "keygen")
	if again == out {
		t.Error("two keys from cluster keygen are the same")
	}
	cfg := "cluster: {bind: '127.0.0.1:7946', secret_keys: [" + strings.TrimSpace(out) + "]}\nfrontends: {udp: {connection_id_keys: [" + strings.TrimSpace(again) + "]}}\n"
	if _, err := node.Parse([]byte(cfg)); err != nil {
		t.Errorf("a config with generated keys does not parse: %v", err)
	}
}

func TestUnknownCommand(t *testing.T) {
	code, _, errOut := runCLI(t, "frobnicate")
	if code != exitUsage || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command = %d %q", code, errOut)
	}
}

func TestConfigDefaultsParses(t *testing.T) {
	code, out, _ := runCLI(t, "config", "defaults")
	if code != exitOK {
		t.Fatalf("config defaults exited %d", code)
	}
	if _, err := node.Parse([]byte(out)); err != nil {
		t.Errorf("config defaults output does not parse: %v", err)
	}
	if !strings.Contains(out, "# ") {
		t.Error("config defaults output has no comments")
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, good, "tracker: {announce_interval: 20m}\n")
	writeFile(t, bad, "frontends:\n  udp:\n    batch_size: 0\n")
	if code, out, errOut := runCLI(t, "config", "check", good); code != exitOK || !strings.Contains(out, "ok") {
		t.Errorf("check good = %d %q %q", code, out, errOut)
	}
	code, _, errOut := runCLI(t, "config", "check", bad)
	if code != exitUsage || !strings.Contains(errOut, "frontends.udp.batch_size") {
		t.Errorf("check bad = %d %q, want exit 2 naming frontends.udp.batch_size", code, errOut)
	}
	clash := filepath.Join(dir, "clash.yaml")
	writeFile(t, clash, "frontends: {http: {addr: '127.0.0.1:6880'}}\n")
	code, _, errOut = runCLI(t, "config", "check", clash)
	if code != exitUsage || !strings.Contains(errOut, "metrics.addr") || !strings.Contains(errOut, "frontends.http.addr") {
		t.Errorf("check http and metrics on one port = %d %q, want exit 2 naming both keys", code, errOut)
	}
	if code, _, _ := runCLI(t, "config", "check", filepath.Join(dir, "missing.yaml")); code != exitUsage {
		t.Errorf("check missing file = %d, want 2", code)
	}
	if code, _, _ := runCLI(t, "serve", "--config", bad); code != exitUsage {
		t.Errorf("serve with a bad config = %d, want 2", code)
	}
}

// TestServeLifecycle starts a node through the CLI, reloads it and stops it
// with signals, as an operator would.
func TestServeLifecycle(t *testing.T) {
	metrics := freePort(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "karuta.yaml")
	cfg := "node: {name: cli}\nlog: {level: error}\nfrontends:\n  http: {addr: '127.0.0.1:0'}\n  udp: {addr: '127.0.0.1:0'}\nmetrics: {addr: '" + metrics + "'}\n"
	writeFile(t, path, cfg)

	sigs := make(chan os.Signal, 1)
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run([]string{"serve", "--config", path}, &bytes.Buffer{}, &stderr, sigs) }()

	eventually.True(t, 10*time.Second, "node becomes ready", func() bool {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited early with %d: %s", code, stderr.String())
		default:
		}
		return false
	})
	writeFile(t, path, cfg+"tracker: {announce_interval: 40m}\n")
	sigs <- syscall.SIGHUP
	sigs <- syscall.SIGTERM
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("serve exited %d after SIGTERM: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
