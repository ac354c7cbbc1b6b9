package node

import (
	"context"
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
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// approvalHooks parses a config document and returns its hooks, so the
// tests configure the hooks exactly as an operator's file would.
func approvalHooks(t *testing.T, doc string) []hooks.Spec {
	t.Helper()
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, doc)
	}
	return cfg.Hooks
}

// startApprovalNode starts a node with the hooks of doc and returns
// clients for both frontends.
func startApprovalNode(t *testing.T, doc string) (n *Node, httpc, udpc *client) {
	t.Helper()
	specs := approvalHooks(t, doc)
	n = startNode(t, "127.0.0.1", func(c *Config) { c.Hooks = specs })
	return n, newClient(t, "http://"+n.Addrs().HTTP+"/announce"), newClient(t, "udp://"+n.Addrs().UDP)
}

// tryAnnounce announces and returns the error instead of failing.
func (c *client) tryAnnounce(req tracker.AnnounceRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.cl.Announce(ctx, req, trhttp.AnnounceOpt{})
	return err
}

// tryScrape scrapes and returns the error instead of failing. The HTTP
// client ignores a failure reason in a scrape answer, so over HTTP this
// reads the bencoded answer itself.
func (c *client) tryScrape(ihs ...infohash.T) error {
	c.t.Helper()
	if !strings.HasPrefix(c.url, "http") {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.cl.Scrape(ctx, ihs)
		return err
	}
	q := url.Values{}
	for _, ih := range ihs {
		q.Add("info_hash", string(ih[:]))
	}
	resp, err := http.Get(strings.TrimSuffix(c.url, "/announce") + "/scrape?" + q.Encode())
	if err != nil {
		c.t.Fatalf("scrape %s: %v", c.url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if _, reason, ok := strings.Cut(string(body), "14:failure reason"); ok {
		return httpFailure(reason)
	}
	return nil
}

type httpFailure string

func (f httpFailure) Error() string { return "bencoded failure reason " + string(f) }

// wantRefused checks that err carries reason, as a frontend reports it.
func wantRefused(t *testing.T, what string, err error, reason string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), reason) {
		t.Errorf("%s: got %v, want refusal %q", what, err, reason)
	}
}

func wantOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v, want it accepted", what, err)
	}
}

func approvalPeerID(prefix string) [20]byte {
	var id [20]byte
	copy(id[:], prefix)
	for i := len(prefix); i < len(id); i++ {
		id[i] = 'z'
	}
	return id
}

func TestApprovalClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clients.txt")
	writeList(t, path, "# clients we trust\n-KT0001-\n")
	_, httpc, udpc := startApprovalNode(t, `
hooks:
  - name: client_approval
    options: {mode: allow, list: ["T03I"], file: `+path+`}
`)
	ih := infohash.T{0xc1}
	for _, c := range []*client{httpc, udpc} {
		t.Run(scheme(c.url), func(t *testing.T) {
			wantOK(t, "Azureus style from the file", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('a'), Port: 1, NumWant: -1}))
			wantOK(t, "Shadow style from the list", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: ih, PeerId: approvalPeerID("T03I--"), Port: 2, NumWant: -1}))
			wantRefused(t, "other client", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: ih, PeerId: approvalPeerID("-XY1234-"), Port: 3, NumWant: -1}),
				"client -XY1234- is not allowed")
			wantRefused(t, "other Shadow version", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: ih, PeerId: approvalPeerID("T03H--"), Port: 4, NumWant: -1}),
				"client T03H--zz is not allowed")
			wantOK(t, "scrape (no peer_id to check)", c.tryScrape(ih))
		})
	}
}

func TestApprovalTorrent(t *testing.T) {
	approved, v2, other := infohash.T{0xa1}, infohash.T{0xa2, 0x22}, infohash.T{0xb0}
	_, httpc, udpc := startApprovalNode(t, `
hooks:
  - name: torrent_approval
    options:
      mode: allow
      list:
        - `+approved.HexString()+`
        - `+v2.HexString()+strings.Repeat("f", 24)+` # a v2 infohash, announced truncated
`)
	reason := "torrent " + other.HexString() + " is not approved"
	for _, c := range []*client{httpc, udpc} {
		t.Run(scheme(c.url), func(t *testing.T) {
			wantOK(t, "approved announce", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: approved, PeerId: peerID('a'), Port: 1, NumWant: -1}))
			wantOK(t, "approved v2 announce", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: v2, PeerId: peerID('a'), Port: 1, NumWant: -1}))
			wantRefused(t, "unapproved announce", c.tryAnnounce(tracker.AnnounceRequest{InfoHash: other, PeerId: peerID('a'), Port: 1, NumWant: -1}), reason)
			wantOK(t, "approved scrape", c.tryScrape(approved, v2))
			wantRefused(t, "scrape with an unapproved hash", c.tryScrape(approved, other, v2), reason)
		})
	}
}

// TestApprovalHotReload changes the list file under a running node; the
// change must take effect through the watcher, or through Reload (SIGHUP)
// when the watcher is off. A broken file keeps the list in force.
func TestApprovalHotReload(t *testing.T) {
	first, second := infohash.T{0xd1}, infohash.T{0xd2}
	for _, tt := range []struct {
		name     string
		interval string
	}{{"watcher", "20ms"}, {"sighup", "0s"}} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "banned.txt")
			writeList(t, path, first.HexString()+"\n")
			n, logs := startNodeLogged(t, "127.0.0.1", func(c *Config) {
				c.Hooks = approvalHooks(t, `
hooks:
  - name: torrent_approval
    options: {mode: deny, file: `+path+`, check_interval: `+tt.interval+`}
`)
			})
			httpc, udpc := newClient(t, "http://"+n.Addrs().HTTP+"/announce"), newClient(t, "udp://"+n.Addrs().UDP)
			refused := func(c *client, ih infohash.T) bool {
				err := c.tryAnnounce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('h'), Port: 7, NumWant: -1})
				if err != nil && !strings.Contains(err.Error(), "torrent "+ih.HexString()+" is not approved") {
					t.Fatalf("announce %s to %s: unexpected error %v", ih.HexString(), c.url, err)
				}
				return err != nil
			}
			apply := func(wantErr string) {
				t.Helper()
				if tt.name == "watcher" {
					return
				}
				err := n.Reload(n.Config())
				if wantErr == "" && err != nil || wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)) {
					t.Fatalf("Reload = %v, want error %q", err, wantErr)
				}
			}
			for _, c := range []*client{httpc, udpc} {
				if !refused(c, first) || refused(c, second) {
					t.Fatalf("%s: initial list not in force", c.url)
				}
			}

			writeList(t, path, second.HexString()+"\n")
			apply("")
			for _, c := range []*client{httpc, udpc} {
				eventually.True(t, 5*time.Second, c.url+" sees the new list", func() bool { return !refused(c, first) && refused(c, second) })
			}

			writeList(t, path, second.HexString()+"\nnot-a-hash\n")
			apply("torrent_approval: file " + path + `: line 2: "not-a-hash" is not a 40- or 64-character hex infohash`)
			if tt.name == "watcher" {
				eventually.True(t, 5*time.Second, "the watcher refuses the broken file", func() bool {
					return logs.FilterMessage("approval list not reloaded; keeping the previous one").
						FilterField(zap.String("trigger", "change")).Len() > 0
				})
			}
			for _, c := range []*client{httpc, udpc} {
				if refused(c, first) || !refused(c, second) {
					t.Errorf("%s: a broken file replaced the list", c.url)
				}
			}
		})
	}
}

func TestApprovalConfigErrors(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{`hooks: [{name: client_approval, options: {mode: maybe, list: ["-qB"]}}]`,
			`config: hooks[0].options.mode: "maybe" is not allowed; want allow or deny`},
		{`hooks: [{name: torrent_approval, options: {mode: deny, list: [` + strings.Repeat("a", 40) + `, zz]}}]`,
			`config: hooks[0].options.list[1]: "zz" is not a 40- or 64-character hex infohash`},
		{`hooks: [{name: torrent_approval, options: {mode: allow}}]`,
			`config: hooks[0].options.list: allow mode with no list and no file would refuse everything`},
		{`hooks: [{name: client_approval, options: {mode: deny, lists: []}}]`,
			`config: hooks[0].options.lists: line 1: unknown key`},
		{`hooks: [{name: client_approval, options: {mode: deny, file: /x, check_interval: 1ms}}]`,
			`config: hooks[0].options.check_interval: 1ms is out of range`},
	} {
		_, err := Parse([]byte(tt.doc))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Parse(%s) = %v, want an error starting %q", tt.doc, err, tt.want)
		}
	}

	// The file is read when the node is built, not when the config is parsed.
	missing := filepath.Join(t.TempDir(), "missing.txt")
	cfg, err := Parse([]byte(`hooks: [{name: torrent_approval, options: {mode: allow, file: ` + missing + `}}]`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "127.0.0.1:0", ""
	n, err := New(cfg, Options{Log: zaptest.NewLogger(t), Version: "test"})
	if err == nil {
		_ = n.Shutdown(context.Background())
		t.Fatal("New succeeded with a missing list file")
	}
	if want := "hooks[0] (torrent_approval): file " + missing + ": no such file or directory"; !strings.Contains(err.Error(), want) {
		t.Errorf("New = %v, want it to contain %q", err, want)
	}
}

// writeList replaces path by renaming a new file over it.
func writeList(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func scheme(u string) string {
	s, _, _ := strings.Cut(u, ":")
	return s
}
