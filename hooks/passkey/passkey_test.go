package passkey

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	// Write and rename, as deploy tools do, so the watcher never reads a
	// half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newHook(t *testing.T, cfg Config) *Hook {
	t.Helper()
	h, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func announce(h *Hook, p bittorrent.Params) error {
	return h.HandleAnnounce(context.Background(), &bittorrent.AnnounceRequest{Params: p}, nil)
}

func route(key string) bittorrent.Params {
	return bittorrent.Params{Path: "/announce/" + key, Route: []bittorrent.Param{{Key: "passkey", Value: key}}}
}

func TestCheck(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys")
	writeFile(t, file, "# members\nalpha\n\n  beta  \n")
	cfg := DefaultConfig()
	cfg.File = file
	cfg.Keys = []string{"inline"}
	cfg.Paths = []string{"/announce/{passkey}", "/{passkey}/announce"}
	h := newHook(t, cfg)
	tests := []struct {
		name   string
		params bittorrent.Params
		want   error
	}{
		{"route known", route("alpha"), nil},
		{"route trimmed", route("beta"), nil},
		{"route inline", route("inline"), nil},
		{"route unknown", route("gamma"), ErrUnknown},
		{"route comment is no key", route("#"), ErrUnknown},
		{"no route, no path", bittorrent.Params{Path: "/announce"}, ErrMissing},
		{"empty", bittorrent.Params{}, ErrMissing},
		{"udp path known", bittorrent.Params{Path: "/announce/alpha"}, nil},
		{"udp path second pattern", bittorrent.Params{Path: "/beta/announce"}, nil},
		{"udp path escaped", bittorrent.Params{Path: "/announce/%61lpha"}, nil},
		{"udp path bad escape", bittorrent.Params{Path: "/announce/%zz"}, ErrMissing},
		{"udp path unknown", bittorrent.Params{Path: "/announce/zzz"}, ErrUnknown},
		{"udp path with query", bittorrent.Params{Path: "/announce/alpha", Query: "x=1"}, nil},
		{"udp path too long", bittorrent.Params{Path: "/announce/alpha/x"}, ErrMissing},
		{"udp path trailing slash", bittorrent.Params{Path: "/announce/alpha/"}, ErrMissing},
		{"udp path empty key", bittorrent.Params{Path: "/announce/"}, ErrMissing},
		{"query off", bittorrent.Params{Path: "/announce", Query: "passkey=alpha"}, ErrMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := announce(h, tt.params)
			if !errors.Is(err, tt.want) {
				t.Errorf("HandleAnnounce(%+v) = %v, want %v", tt.params, err, tt.want)
			}
		})
	}
	if got := bittorrent.FailureReason(announce(h, route("gamma"))); got != "unknown passkey" {
		t.Errorf("failure reason %q", got)
	}
	if got := bittorrent.FailureReason(announce(h, bittorrent.Params{})); got != "missing passkey" {
		t.Errorf("failure reason %q", got)
	}
}

func TestQueryAndScrapes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Keys = []string{"k1"}
	cfg.Query = true
	h := newHook(t, cfg)
	if err := announce(h, bittorrent.Params{Path: "/announce", Query: "passkey=k1"}); err != nil {
		t.Errorf("query key: %v", err)
	}
	ctx := context.Background()
	if err := h.HandleScrape(ctx, &bittorrent.ScrapeRequest{}, nil); !errors.Is(err, ErrMissing) {
		t.Errorf("scrape without key: %v, want %v", err, ErrMissing)
	}
	if err := h.HandleScrape(ctx, &bittorrent.ScrapeRequest{Params: bittorrent.Params{Route: []bittorrent.Param{{Key: "passkey", Value: "k1"}}}}, nil); err != nil {
		t.Errorf("scrape with key: %v", err)
	}
	cfg.CheckScrapes = false
	h = newHook(t, cfg)
	if err := h.HandleScrape(ctx, &bittorrent.ScrapeRequest{}, nil); err != nil {
		t.Errorf("scrape with check_scrapes off: %v", err)
	}
}

func TestCustomParam(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Keys = []string{"k1"}
	cfg.Param = "pk"
	h := newHook(t, cfg)
	if err := announce(h, bittorrent.Params{Path: "/announce/k1"}); err != nil {
		t.Errorf("default path pattern with param pk: %v", err)
	}
	if err := announce(h, bittorrent.Params{Path: "/a/k1", Route: []bittorrent.Param{{Key: "passkey", Value: "k1"}}}); !errors.Is(err, ErrMissing) {
		t.Errorf("route param named passkey with param pk: %v, want missing", err)
	}
}

// TestReloadKeepsOldKeys: a file that is gone, empty or bad leaves the keys
// in force; a good one replaces them.
func TestReloadKeepsOldKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys")
	writeFile(t, file, "alpha\n")
	cfg := DefaultConfig()
	cfg.File = file
	cfg.CheckInterval = 0
	h := newHook(t, cfg)
	tests := []struct {
		name    string
		prepare func()
		wantErr string
		allowed string
	}{
		{"bad line", func() { writeFile(t, file, "beta\nhas space\n") }, "line 2", "alpha"},
		{"empty", func() { writeFile(t, file, "# none\n") }, "no keys", "alpha"},
		{"gone", func() { os.Remove(file) }, "no such file", "alpha"},
		{"good", func() { writeFile(t, file, "beta\n") }, "", "beta"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.prepare()
			err := h.Reload()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Reload() = %v, want error containing %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "beta") {
				t.Errorf("error %q repeats a key", err)
			}
			if err := announce(h, route(tt.allowed)); err != nil {
				t.Errorf("%s refused: %v", tt.allowed, err)
			}
		})
	}
	if err := announce(h, route("alpha")); !errors.Is(err, ErrUnknown) {
		t.Errorf("alpha after reload: %v, want unknown", err)
	}
}

// On synctest's fake clock, so the checks that must ignore a bad file
// pass in no wall time.
func TestWatcherPicksUpChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "keys")
		writeFile(t, file, "alpha\n")
		cfg := DefaultConfig()
		cfg.File = file
		cfg.CheckInterval = 100 * time.Millisecond
		h := newHook(t, cfg)
		writeFile(t, file, "beta\n")
		eventually.True(t, 5*time.Second, "beta accepted", func() bool { return announce(h, route("beta")) == nil })
		if err := announce(h, route("alpha")); !errors.Is(err, ErrUnknown) {
			t.Errorf("alpha after change: %v, want unknown", err)
		}
		// An in-place rewrite keeps the file's identity; size and time tell.
		if err := os.WriteFile(file, []byte("gamma\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		eventually.True(t, 5*time.Second, "gamma accepted", func() bool { return announce(h, route("gamma")) == nil })
		// A bad file is logged and ignored.
		writeFile(t, file, "bad key\n")
		time.Sleep(3 * cfg.CheckInterval) // fake: three checks
		if err := announce(h, route("gamma")); err != nil {
			t.Errorf("gamma after a bad file: %v", err)
		}
	})
}

// TestConcurrentReload races lookups against reloads, for -race.
func TestConcurrentReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys")
	writeFile(t, file, "alpha\n")
	cfg := DefaultConfig()
	cfg.File = file
	cfg.CheckInterval = 100 * time.Millisecond
	h := newHook(t, cfg)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 2000 {
				if err := announce(h, route("alpha")); err != nil {
					t.Errorf("alpha refused during reloads: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			tmp := file + ".tmp"
			if err := os.WriteFile(tmp, []byte("alpha\nkey"+string(rune('a'+i%26))+"\n"), 0o600); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, file); err != nil {
				t.Error(err)
				return
			}
			if err := h.Reload(); err != nil {
				t.Errorf("Reload: %v", err)
			}
		}
	})
	wg.Wait()
}

func TestNewErrors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.File = filepath.Join(t.TempDir(), "missing")
	if _, err := New(cfg, zaptest.NewLogger(t)); err == nil {
		t.Error("New with a missing key file succeeded")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		key    string
	}{
		{"no keys at all", func(c *Config) { c.Keys = nil }, "file"},
		{"bad inline key", func(c *Config) { c.Keys = []string{"ok", "a/b"} }, "keys[1]"},
		{"empty inline key", func(c *Config) { c.Keys = []string{""} }, "keys[0]"},
		{"bad param", func(c *Config) { c.Param = "pass key" }, "param"},
		{"empty param", func(c *Config) { c.Param = "" }, "param"},
		{"path without param", func(c *Config) { c.Paths = []string{"/announce/{other}"} }, "paths[0]"},
		{"relative path", func(c *Config) { c.Paths = []string{"announce/{passkey}"} }, "paths[0]"},
		{"param twice", func(c *Config) { c.Paths = []string{"/{passkey}/{passkey}"} }, "paths[0]"},
		{"check interval", func(c *Config) { c.CheckInterval = time.Millisecond }, "check_interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Keys = []string{"k"}
			tt.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
				t.Errorf("Validate() = %v, want an error naming %s", err, tt.key)
			}
		})
	}
	ok := DefaultConfig()
	ok.File = "/etc/karuta/passkeys"
	if err := ok.Validate(); err != nil {
		t.Errorf("file only: %v", err)
	}
}

func BenchmarkCheck(b *testing.B) {
	cfg := DefaultConfig()
	for i := range 100_000 {
		cfg.Keys = append(cfg.Keys, strings.Repeat("k", 8)+string(rune('a'+i%26))+strings.Repeat("0", i%7)+string(rune('a'+i/26%26))+string(rune('a'+i/676%26))+string(rune('a'+i/17576%26)))
	}
	h, err := New(cfg, zaptest.NewLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		p    bittorrent.Params
	}{
		{"http_route", route(cfg.Keys[500])},
		{"udp_path", bittorrent.Params{Path: "/announce/" + cfg.Keys[500]}},
		{"unknown", route("nope")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = h.check(&bc.p)
			}
		})
	}
}
