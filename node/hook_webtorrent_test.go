package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/types/infohash"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// wtClient is a WebTorrent socket for the hook tests.
type wtClient struct {
	t  *testing.T
	nc net.Conn
}

// dialWT opens a socket at path on n's WebTorrent frontend, from src.
func dialWT(t *testing.T, n *Node, path, src string) *wtClient {
	t.Helper()
	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return nd.DialContext(ctx, network, addr)
	}}
	nc, br, _, err := d.Dial(t.Context(), "ws://"+n.Addrs().WebTorrent+path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	if br != nil {
		ws.PutReader(br)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &wtClient{t: t, nc: nc}
}

// announce sends an announce for ih as peer id and returns the failure
// reason, "" when answered.
func (c *wtClient) announce(ih infohash.T, id byte) string {
	c.t.Helper()
	return c.ask(map[string]any{"action": "announce", "info_hash": binString(ih[:]), "peer_id": binString(peerIDBytes(id)), "left": 0, "numwant": 0})
}

func (c *wtClient) ask(v any) string {
	c.t.Helper()
	b, _ := json.Marshal(v)
	if err := wsutil.WriteClientText(c.nc, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := wsutil.ReadServerText(c.nc)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("answer %q: %v", b, err)
	}
	r, _ := m["failure reason"].(string)
	return r
}

func peerIDBytes(id byte) []byte {
	p := peerID(id)
	return p[:]
}

// The hook chain runs for WebSocket announces as for HTTP and UDP ones:
// a JWT in the socket's query, a passkey in its path, torrent and client
// approval, and rate limits by the client's IP across its sockets.
func TestWebTorrentHooks(t *testing.T) {
	is := newJWTIssuer(t, "k1")
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(is.jwks(t)) }))
	t.Cleanup(jwks.Close)
	keys := filepath.Join(t.TempDir(), "passkeys")
	if err := os.WriteFile(keys, []byte("goodkey\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	approved, other := infohash.T{0xa1}, infohash.T{0xb2}
	parsed, err := Parse(fmt.Appendf(nil, `
hooks:
  - name: passkey
    options: {file: %q}
  - name: jwt
    options: {jwks_url: %s, issuer: registry, audience: karuta, leeway: 10s}
  - name: torrent_approval
    options: {mode: allow, list: [%s, %s]}
  - name: client_approval
    options: {mode: deny, list: ["-BAD"]}
  - name: rate_limit
    options:
      per_ip: {rate: 0.001, burst: 4}
`, keys, jwks.URL, approved.HexString(), other.HexString()))
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Hooks = parsed.Hooks
		c.Frontends.WebTorrent.Addr = "127.0.0.1:0"
		c.Frontends.WebTorrent.Routes = []string{"/{passkey}/announce"}
	})
	tok := is.token(t, approved, time.Hour)

	ok := dialWT(t, n, "/goodkey/announce?jwt="+tok, "127.0.4.1")
	if r := ok.announce(approved, 'a'); r != "" {
		t.Fatalf("valid passkey and token refused: %q", r)
	}
	for _, tc := range []struct {
		name, path string
		ih         infohash.T
		id         byte
		want       string
	}{
		{"wrong passkey", "/badkey/announce?jwt=" + tok, approved, 'a', "passkey"},
		{"no token", "/goodkey/announce", approved, 'a', "jwt: missing token"},
		{"token for another torrent", "/goodkey/announce?jwt=" + tok, other, 'a', "jwt: infohash claim does not match"},
		{"unapproved torrent", "/goodkey/announce?jwt=" + is.token(t, infohash.T{0xee}, time.Hour), infohash.T{0xee}, 'a', "not approved"},
	} {
		c := dialWT(t, n, tc.path, "127.0.4.2")
		if r := c.announce(tc.ih, tc.id); !strings.Contains(r, tc.want) {
			t.Errorf("%s: failure reason %q; want %q", tc.name, r, tc.want)
		}
	}
	bad := dialWT(t, n, "/goodkey/announce?jwt="+tok, "127.0.4.3")
	badID := map[string]any{"action": "announce", "info_hash": binString(approved[:]), "peer_id": "-BAD001-" + strings.Repeat("z", 12), "left": 0}
	if r := bad.ask(badID); !strings.Contains(r, "not allowed") {
		t.Errorf("denied client: failure reason %q", r)
	}

	// The rate limit counts the client's IP, not its socket: four
	// announces from 127.0.4.9 over two sockets pass, the fifth does not.
	s1, s2 := dialWT(t, n, "/goodkey/announce?jwt="+tok, "127.0.4.9"), dialWT(t, n, "/goodkey/announce?jwt="+tok, "127.0.4.9")
	for i, c := range []*wtClient{s1, s2, s1, s2} {
		if r := c.announce(approved, byte('p'+i)); r != "" {
			t.Fatalf("announce %d: %q", i, r)
		}
	}
	if r := s1.announce(approved, 'z'); r != "rate limit exceeded" {
		t.Errorf("fifth announce from one IP: %q; want rate limit exceeded", r)
	}
	// Another IP is not limited by it.
	if r := dialWT(t, n, "/goodkey/announce?jwt="+tok, "127.0.4.10").announce(approved, 'y'); r != "" {
		t.Errorf("announce from another IP: %q", r)
	}
}

// binString is b as a WebTorrent binary string: one character per byte.
func binString(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}
