package node

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/tracker/udp"
	"github.com/anacrolix/torrent/types/infohash"
	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// jwtIssuer signs announce tokens with an Ed25519 key it publishes as a JWKS.
type jwtIssuer struct {
	kid  string
	priv ed25519.PrivateKey
}

func newJWTIssuer(t *testing.T, kid string) jwtIssuer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jwtIssuer{kid: kid, priv: priv}
}

func (is jwtIssuer) jwks(t *testing.T) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "OKP", "crv": "Ed25519", "kid": is.kid, "use": "sig", "alg": "EdDSA",
		"x": base64.RawURLEncoding.EncodeToString(is.priv.Public().(ed25519.PublicKey)),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// token is valid for an hour, for ih, from issuer "registry" to "karuta".
func (is jwtIssuer) token(t *testing.T, ih infohash.T, exp time.Duration) string {
	t.Helper()
	tok := gojwt.NewWithClaims(gojwt.SigningMethodEdDSA, gojwt.MapClaims{
		"iss": "registry", "aud": "karuta", "exp": time.Now().Add(exp).Unix(),
		"infohash": ih.HexString(),
	})
	tok.Header["kid"] = is.kid
	s, err := tok.SignedString(is.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// withJWT configures the jwt hook through Parse, as a config file would.
func withJWT(t *testing.T, jwksURL string) func(*Config) {
	t.Helper()
	cfg, err := Parse(fmt.Appendf(nil, `
hooks:
  - name: jwt
    options:
      jwks_url: %s
      issuer: registry
      audience: karuta
      leeway: 10s
      require_on_scrape: true
`, jwksURL))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return func(c *Config) { c.Hooks = cfg.Hooks }
}

// rawHTTP sends a GET to the HTTP frontend and decodes the bencoded answer.
func rawHTTP(t *testing.T, addr, path string, q url.Values) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + addr + path + "?" + q.Encode())
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	v, err := bencode.Decode(body)
	if err != nil {
		t.Fatalf("GET %s: %v in %q", path, err, body)
	}
	d, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("GET %s: answer %q is not a dictionary", path, body)
	}
	return d
}

func announceQuery(ih infohash.T, id byte, port int, tok string) url.Values {
	pid := peerID(id)
	q := url.Values{
		"info_hash": {string(ih[:])}, "peer_id": {string(pid[:])}, "port": {fmt.Sprint(port)},
		"left": {"0"}, "compact": {"1"}, "uploaded": {"0"}, "downloaded": {"0"},
	}
	if tok != "" {
		q.Set("jwt", tok)
	}
	return q
}

func failure(d map[string]any) string {
	s, _ := d["failure reason"].(string)
	return s
}

// udpAnnounce announces over UDP with the URL data /announce?jwt=tok and
// returns the tracker's error message, or "" on success.
func udpAnnounce(t *testing.T, addr string, ih infohash.T, id byte, port uint16, tok string) (tracker.AnnounceResponse, string) {
	t.Helper()
	u := "udp://" + addr + "/announce"
	if tok != "" {
		u += "?jwt=" + tok
	}
	cl, err := tracker.NewClient(u, tracker.NewClientOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cl.Announce(ctx, tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID(id), Port: port, NumWant: -1}, trhttp.AnnounceOpt{})
	var er udp.ErrorResponse
	if errors.As(err, &er) {
		return resp, strings.TrimRight(er.Message, "\x00")
	}
	if err != nil {
		t.Fatalf("UDP announce: %v", err)
	}
	return resp, ""
}

// TestJWTFrontends admits and refuses announces through both real
// frontends: the token in the HTTP query, and in the BEP 41 URL data of a
// UDP announce (which anacrolix's client sends, query included).
func TestJWTFrontends(t *testing.T) {
	is := newJWTIssuer(t, "k1")
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(is.jwks(t)) }))
	t.Cleanup(jwks.Close)
	n := startNode(t, "127.0.0.1", withJWT(t, jwks.URL))
	a := n.Addrs()
	ih, other := infohash.T{0xAB, 1}, infohash.T{0xCD, 2}
	tok := is.token(t, ih, time.Hour)

	t.Run("http", func(t *testing.T) {
		if d := rawHTTP(t, a.HTTP, "/announce", announceQuery(ih, 'h', 6001, tok)); failure(d) != "" {
			t.Fatalf("valid token refused: %q", failure(d))
		}
		for _, tt := range []struct {
			name, path string
			q          url.Values
			want       string
		}{
			{"missing token", "/announce", announceQuery(ih, 'h', 6001, ""), "jwt: missing token"},
			{"other infohash", "/announce", announceQuery(other, 'h', 6001, tok), "jwt: infohash claim does not match"},
			{"expired", "/announce", announceQuery(ih, 'h', 6001, is.token(t, ih, -time.Minute)), "jwt: token expired"},
			{"other signer", "/announce", announceQuery(ih, 'h', 6001, newJWTIssuer(t, "k1").token(t, ih, time.Hour)), "jwt: signature invalid"},
			{"unknown kid", "/announce", announceQuery(ih, 'h', 6001, newJWTIssuer(t, "k2").token(t, ih, time.Hour)), "jwt: unknown key id"},
			{"garbage", "/announce", announceQuery(ih, 'h', 6001, "garbage"), "jwt: malformed token"},
			{"scrape without token", "/scrape", url.Values{"info_hash": {string(ih[:])}}, "jwt: missing token"},
			{"scrape of another hash", "/scrape", url.Values{"info_hash": {string(other[:])}, "jwt": {tok}}, "jwt: infohash claim does not match"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				if got := failure(rawHTTP(t, a.HTTP, tt.path, tt.q)); got != tt.want {
					t.Errorf("failure reason = %q, want %q", got, tt.want)
				}
			})
		}
		d := rawHTTP(t, a.HTTP, "/scrape", url.Values{"info_hash": {string(ih[:])}, "jwt": {tok}})
		if failure(d) != "" {
			t.Fatalf("scrape with token refused: %q", failure(d))
		}
		files, _ := d["files"].(map[string]any)
		if f, _ := files[string(ih[:])].(map[string]any); f == nil || f["complete"] != int64(1) {
			t.Errorf("scrape = %v, want the one seeder", d)
		}
		// Authorization header instead of the query.
		req, _ := http.NewRequest(http.MethodGet, "http://"+a.HTTP+"/announce?"+announceQuery(ih, 'i', 6002, "").Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "failure reason") {
			t.Errorf("Bearer token refused: %q", body)
		}
	})

	t.Run("udp", func(t *testing.T) {
		var resp tracker.AnnounceResponse
		eventually.True(t, 5*time.Second, "UDP leecher sees the HTTP seeder", func() bool {
			var msg string
			resp, msg = udpAnnounce(t, a.UDP, ih, 'u', 7001, tok)
			if msg != "" {
				t.Fatalf("valid token over UDP refused: %q", msg)
			}
			return hasPeer(resp, 6001)
		})
		for _, tt := range []struct {
			name, tok string
			ih        infohash.T
			want      string
		}{
			{"missing token", "", ih, "jwt: missing token"},
			{"other infohash", tok, other, "jwt: infohash claim does not match"},
			{"expired", is.token(t, ih, -time.Minute), ih, "jwt: token expired"},
			{"unknown kid", newJWTIssuer(t, "k2").token(t, ih, time.Hour), ih, "jwt: unknown key id"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				if _, msg := udpAnnounce(t, a.UDP, tt.ih, 'u', 7001, tt.tok); msg != tt.want {
					t.Errorf("UDP error = %q, want %q", msg, tt.want)
				}
			})
		}
		// BEP 41 URL data rides on announces only, so a UDP scrape carries
		// no token and is refused when require_on_scrape is set.
		cl, err := tracker.NewClient("udp://"+a.UDP+"/announce?jwt="+tok, tracker.NewClientOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = cl.Scrape(ctx, []infohash.T{ih})
		var er udp.ErrorResponse
		if !errors.As(err, &er) || !strings.Contains(er.Message, "jwt: missing token") {
			t.Errorf("UDP scrape = %v, want refused for a missing token", err)
		}
	})

	eventually.True(t, 5*time.Second, "metrics count rejections by reason", func() bool {
		resp, err := http.Get("http://" + a.Metrics + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), `karuta_hook_jwt_rejected_total{reason="missing_token"}`) &&
			strings.Contains(string(body), `karuta_hook_jwt_keys 1`)
	})
}

// TestJWTKeysArriveLate starts the node while the JWKS cannot be fetched
// (its server answers 503): the node starts, refuses with "no keys
// available yet" over both frontends, and admits once the JWKS is served.
func TestJWTKeysArriveLate(t *testing.T) {
	is := newJWTIssuer(t, "k1")
	var up atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !up.Load() {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(is.jwks(t))
	}))
	t.Cleanup(srv.Close)
	n := startNode(t, "127.0.0.1", withJWT(t, srv.URL+"/jwks.json"))
	a := n.Addrs()
	ih := infohash.T{0xEE}
	tok := is.token(t, ih, time.Hour)

	if got := failure(rawHTTP(t, a.HTTP, "/announce", announceQuery(ih, 'h', 6001, tok))); got != "jwt: no keys available yet" {
		t.Errorf("HTTP before keys: %q", got)
	}
	if _, msg := udpAnnounce(t, a.UDP, ih, 'u', 7001, tok); msg != "jwt: no keys available yet" {
		t.Errorf("UDP before keys: %q", msg)
	}

	up.Store(true)
	eventually.True(t, 5*time.Second, "keys arrive", func() bool {
		return failure(rawHTTP(t, a.HTTP, "/announce", announceQuery(ih, 'h', 6001, tok))) == ""
	})
	if _, msg := udpAnnounce(t, a.UDP, ih, 'u', 7001, tok); msg != "" {
		t.Errorf("UDP after keys: %q", msg)
	}
}

// TestJWTConfigErrors checks that bad options stop Parse with the key path.
func TestJWTConfigErrors(t *testing.T) {
	for _, tt := range []struct{ opts, want string }{
		{`{jwks_url: "ftp://x"}`, `hooks[0].options.jwks_url: "ftp://x" must be an http or https URL`},
		{`{jwks_url: "https://x/jwks", leeway: -1s}`, `hooks[0].options.leeway: -1s is out of range; want 0 to 5m`},
		{`{issuer: registry}`, `hooks[0].options.jwks_url: need at least one of jwks_url and keys`},
		{`{keys: [" "]}`, `hooks[0].options.keys[0]: is empty`},
		{`{jwks_url: "https://x/jwks", algorithms: [RS256]}`, `hooks[0].options.algorithms`},
	} {
		_, err := Parse([]byte("hooks:\n  - name: jwt\n    options: " + tt.opts + "\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("options %s: Parse = %v, want an error containing %q", tt.opts, err, tt.want)
		}
	}
}
