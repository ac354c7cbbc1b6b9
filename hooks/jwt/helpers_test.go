package jwt

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// testKeys are generated once per test binary: RSA generation is slow.
type testKeys struct {
	rsa, rsa2 *rsa.PrivateKey
	ec, ec2   *ecdsa.PrivateKey
	ed, ed2   ed25519.PrivateKey
}

var keysOnce = sync.OnceValue(func() *testKeys {
	k := &testKeys{}
	var err error
	for _, p := range []**rsa.PrivateKey{&k.rsa, &k.rsa2} {
		if *p, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	}
	for _, p := range []**ecdsa.PrivateKey{&k.ec, &k.ec2} {
		if *p, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	}
	for _, p := range []*ed25519.PrivateKey{&k.ed, &k.ed2} {
		if _, *p, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	}
	return k
})

// testNow is the fixed clock of hooks built by newTestHook.
var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

var testIH = bittorrent.InfoHash{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

// goodClaims are claims that pass a hook from newTestHook for testIH.
func goodClaims() gojwt.MapClaims {
	return gojwt.MapClaims{
		"iss":      "registry",
		"aud":      "karuta",
		"exp":      testNow.Add(time.Hour).Unix(),
		"nbf":      testNow.Add(-time.Minute).Unix(),
		"infohash": testIH.String(),
	}
}

// sign makes a token with method and priv, and kid in the header unless empty.
func sign(t testing.TB, method gojwt.SigningMethod, priv any, kid string, c gojwt.MapClaims) string {
	t.Helper()
	tok := gojwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(priv)
	if err != nil {
		t.Fatalf("sign %s: %v", method.Alg(), err)
	}
	return s
}

func pemOf(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwkOf encodes pub as a JWK with kid.
func jwkOf(t testing.TB, kid string, pub crypto.PublicKey) map[string]string {
	t.Helper()
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
			"n": b64u(p.N.Bytes()), "e": b64u(big.NewInt(int64(p.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, err := p.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64u(b[1:33]), "y": b64u(b[33:])}
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64u(p)}
	}
	t.Fatalf("no JWK for %T", pub)
	return nil
}

func jwksOf(t testing.TB, keys ...map[string]string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// jwksServer serves a JWKS that tests may replace, and counts fetches.
type jwksServer struct {
	*httptest.Server
	body    atomic.Pointer[[]byte]
	fetches atomic.Int64
}

// inMemory serves HTTP requests with a handler in the caller's goroutine,
// for tests on synctest's fake clock, which real sockets would stall.
type inMemory struct{ h http.Handler }

func (m inMemory) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	m.h.ServeHTTP(rec, req)
	return rec.Result(), nil
}

func newJWKSServer(t testing.TB, body []byte) *jwksServer {
	s := &jwksServer{}
	s.set(body)
	s.Server = httptest.NewServer(s)
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte) { s.body.Store(&body) }

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.fetches.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(*s.body.Load())
}

// newTestHook builds a hook on the fixed clock, checking issuer "registry"
// and audience "karuta", with a fast retry and refresh, closed at cleanup.
func newTestHook(t testing.TB, cfg Config) *Hook {
	t.Helper()
	if cfg.Param == "" {
		cfg.Param = "jwt"
	}
	if cfg.JWKSRefresh == 0 {
		cfg.JWKSRefresh = time.Minute
	}
	h, err := newHook(cfg, nil, nil, knobs{now: func() time.Time { return testNow }, retryFirst: 10 * time.Millisecond, refresh: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("newHook: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// announce runs an announce for ih with params through h and returns the
// failure reason, or "" when it was admitted.
func announce(h *Hook, ih bittorrent.InfoHash, p bittorrent.Params) string {
	req := bittorrent.AnnounceRequest{InfoHash: ih, Params: p}
	err := h.HandleAnnounce(context.Background(), &req, &bittorrent.AnnounceResponse{})
	if err == nil {
		return ""
	}
	return bittorrent.FailureReason(err)
}

func query(tok string) bittorrent.Params { return bittorrent.Params{Query: "jwt=" + tok} }
