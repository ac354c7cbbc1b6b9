package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/types/infohash"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"go.uber.org/zap/zaptest"
)

// startPasskeyNode runs a node whose passkey hook reads file, with HTTP
// announces at /announce/{passkey} (and /announce, which must refuse). It
// returns the node and the config it runs, for Reload.
func startPasskeyNode(t *testing.T, file string, checkInterval string) (*Node, Config) {
	t.Helper()
	doc := fmt.Sprintf(`
hooks:
  - name: passkey
    options: {file: %q, check_interval: %s}
`, file, checkInterval)
	parsed, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	var running Config
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Hooks = parsed.Hooks
		c.Frontends.HTTP.AnnounceRoutes = []string{"/announce", "/announce/{passkey}"}
		c.Frontends.HTTP.ScrapeRoutes = []string{"/scrape", "/scrape/{passkey}"}
		running = *c
	})
	return n, running
}

func writePasskeys(t *testing.T, file string, keys ...string) {
	t.Helper()
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// passkeyHTTP sends a raw GET to path on the HTTP frontend and returns the
// bencoded failure reason, or "" for an answer without one.
func passkeyHTTP(t *testing.T, addr, path string) string {
	t.Helper()
	q := url.Values{
		"info_hash": {string(make([]byte, 20))},
		"peer_id":   {"-KT0001-passkeytest0"},
		"port":      {"6881"},
		"left":      {"0"},
	}
	if strings.HasPrefix(path, "/scrape") {
		q = url.Values{"info_hash": {string(make([]byte, 20))}}
	}
	resp, err := http.Get("http://" + addr + path + "?" + q.Encode())
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
	}
	_, after, ok := strings.Cut(string(body), "14:failure reason")
	if !ok {
		return ""
	}
	var n int
	if _, err := fmt.Sscanf(after, "%d:", &n); err != nil {
		t.Fatalf("GET %s: bad failure reason in %q", path, body)
	}
	_, reason, _ := strings.Cut(after, ":")
	return reason[:n]
}

// passkeyUDP announces to a udp:// tracker URL, whose path the client sends
// as BEP 41 URL data, and returns the tracker's error message or "".
func passkeyUDP(t *testing.T, trackerURL string) string {
	t.Helper()
	cl, err := tracker.NewClient(trackerURL, tracker.NewClientOpts{})
	if err != nil {
		t.Fatalf("client for %s: %v", trackerURL, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = cl.Announce(ctx, tracker.AnnounceRequest{InfoHash: infohash.T{7}, PeerId: peerID('p'), Port: 6881, NumWant: -1}, trhttp.AnnounceOpt{})
	if err != nil {
		return err.Error()
	}
	return ""
}

func TestPasskeyFrontends(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passkeys")
	writePasskeys(t, file, "# members", "alpha")
	n, _ := startPasskeyNode(t, file, "0s")
	a := n.Addrs()
	tests := []struct {
		name, path, want string
	}{
		{"known", "/announce/alpha", ""},
		{"escaped known", "/announce/%61lpha", ""},
		{"unknown", "/announce/bogus", "unknown passkey"},
		{"missing", "/announce", "missing passkey"},
		{"scrape known", "/scrape/alpha", ""},
		{"scrape missing", "/scrape", "missing passkey"},
		{"scrape unknown", "/scrape/bogus", "unknown passkey"},
	}
	for _, tt := range tests {
		t.Run("http "+tt.name, func(t *testing.T) {
			if got := passkeyHTTP(t, a.HTTP, tt.path); got != tt.want {
				t.Errorf("GET %s: failure reason %q, want %q", tt.path, got, tt.want)
			}
		})
	}
	udpTests := []struct {
		name, path, want string
	}{
		{"known", "/announce/alpha", ""},
		{"unknown", "/announce/bogus", "unknown passkey"},
		{"missing", "/announce", "missing passkey"},
		{"no url data", "", "missing passkey"},
	}
	for _, tt := range udpTests {
		t.Run("udp "+tt.name, func(t *testing.T) {
			got := passkeyUDP(t, "udp://"+a.UDP+tt.path)
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("udp announce to %s: error %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

// TestPasskeyHotReload changes the key file under a running node: the
// watcher picks it up, and so does Reload (SIGHUP) with the watcher off; a
// bad file keeps the keys in force and Reload reports it.
func TestPasskeyHotReload(t *testing.T) {
	t.Run("watcher", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "passkeys")
		writePasskeys(t, file, "alpha")
		n, _ := startPasskeyNode(t, file, "100ms")
		a := n.Addrs()
		if got := passkeyHTTP(t, a.HTTP, "/announce/beta"); got != "unknown passkey" {
			t.Fatalf("beta before the change: %q", got)
		}
		writePasskeys(t, file, "beta")
		eventually.True(t, 5*time.Second, "beta accepted over HTTP", func() bool { return passkeyHTTP(t, a.HTTP, "/announce/beta") == "" })
		if got := passkeyUDP(t, "udp://"+a.UDP+"/announce/beta"); got != "" {
			t.Errorf("beta over UDP after the change: %q", got)
		}
		if got := passkeyUDP(t, "udp://"+a.UDP+"/announce/alpha"); !strings.Contains(got, "unknown passkey") {
			t.Errorf("alpha over UDP after the change: %q, want unknown passkey", got)
		}
	})
	t.Run("reload", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "passkeys")
		writePasskeys(t, file, "alpha")
		n, cfg := startPasskeyNode(t, file, "0s")
		a := n.Addrs()
		writePasskeys(t, file, "beta")
		time.Sleep(50 * time.Millisecond)
		if got := passkeyHTTP(t, a.HTTP, "/announce/beta"); got != "unknown passkey" {
			t.Fatalf("beta changed without a reload (watcher off): %q", got)
		}
		if err := n.Reload(cfg); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if got := passkeyHTTP(t, a.HTTP, "/announce/beta"); got != "" {
			t.Errorf("beta after Reload: %q", got)
		}
		if got := passkeyHTTP(t, a.HTTP, "/announce/alpha"); got != "unknown passkey" {
			t.Errorf("alpha after Reload: %q, want unknown passkey", got)
		}

		writePasskeys(t, file, "bad key")
		if err := n.Reload(cfg); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("Reload with a bad file = %v, want an error naming line 1", err)
		}
		if got := passkeyUDP(t, "udp://"+a.UDP+"/announce/beta"); got != "" {
			t.Errorf("beta after a failed reload: %q, want it kept", got)
		}
	})
}

func TestPasskeyConfigErrors(t *testing.T) {
	tests := []struct{ doc, want string }{
		{"hooks: [{name: passkey}]", "hooks[0].options.file: neither file nor keys is set"},
		{"hooks: [{name: passkey, options: {keys: [a], param: 'x y'}}]", "hooks[0].options.param:"},
		{"hooks: [{name: passkey, options: {keys: [a], paths: [/announce]}}]", "hooks[0].options.paths[0]:"},
		{"hooks: [{name: passkey, options: {keys: [a], bogus: 1}}]", "hooks[0].options.bogus"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.doc))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tt.doc, err, tt.want)
		}
	}
	// The file is read when the node is built, not when the config is parsed.
	missing := filepath.Join(t.TempDir(), "missing")
	cfg, err := Parse([]byte(`hooks: [{name: passkey, options: {file: ` + missing + `}}]`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "127.0.0.1:0", ""
	n, err := New(cfg, Options{Log: zaptest.NewLogger(t), Version: "test"})
	if err == nil {
		_ = n.Shutdown(context.Background())
		t.Fatal("New succeeded with a missing key file")
	}
	if want := "hooks[0] (passkey): passkey: stat " + missing + ": no such file"; !strings.Contains(err.Error(), want) {
		t.Errorf("New = %v, want it to contain %q", err, want)
	}
}
