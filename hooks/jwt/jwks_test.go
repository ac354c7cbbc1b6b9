package jwt

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

func TestParseJWKS(t *testing.T) {
	k := keysOnce()
	rsaJWK := jwkOf(t, "r", &k.rsa.PublicKey)
	ecJWK := jwkOf(t, "e", &k.ec.PublicKey)
	edJWK := jwkOf(t, "d", k.ed.Public())
	edit := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(out, kv[i])
			} else {
				out[kv[i]] = kv[i+1]
			}
		}
		return out
	}
	notOnCurve := edit(ecJWK, "y", b64u(make([]byte, 32)))
	tests := []struct {
		name     string
		body     string
		wantAlgs string // algs of the keys, in order
		skipped  int
		wantErr  string
	}{
		{"all three", string(jwksOf(t, rsaJWK, ecJWK, edJWK)), "RS256 ES256 EdDSA", 0, ""},
		{"padded base64", string(jwksOf(t, edit(edJWK, "x", edJWK["x"]+"="))), "EdDSA", 0, ""},
		{"skips enc, oct, P-384, RS384", string(jwksOf(t, edJWK,
			edit(rsaJWK, "use", "enc"),
			map[string]string{"kty": "oct", "k": "c2VjcmV0"},
			edit(ecJWK, "crv", "P-384"),
			edit(rsaJWK, "alg", "RS384"))), "EdDSA", 4, ""},
		{"only skipped keys", string(jwksOf(t, map[string]string{"kty": "oct"})), "", 0, "no usable key"},
		{"empty", `{"keys":[]}`, "", 0, "no usable key"},
		{"not JSON", `<html>`, "", 0, "decode JWKS"},
		{"bad base64", string(jwksOf(t, edit(edJWK, "x", "!!!"))), "", 0, "x is not base64url"},
		{"short Ed25519", string(jwksOf(t, edit(edJWK, "x", b64u([]byte{1, 2, 3})))), "", 0, "x has 3 bytes; want 32"},
		{"EC point off the curve", string(jwksOf(t, notOnCurve)), "", 0, "EC point"},
		{"RSA without n", string(jwksOf(t, edit(rsaJWK, "n", ""))), "", 0, "n is missing"},
		{"RSA even e", string(jwksOf(t, edit(rsaJWK, "e", b64u([]byte{1, 0})))), "", 0, "not an odd number"},
		{"RSA too short", string(jwksOf(t, edit(rsaJWK, "n", b64u(k.rsa.N.Bytes()[:128])))), "", 0, "too short"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, skipped, err := parseJWKS([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseJWKS error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseJWKS: %v", err)
			}
			var algs []string
			for _, k := range keys {
				algs = append(algs, k.alg)
			}
			if got := strings.Join(algs, " "); got != tt.wantAlgs {
				t.Errorf("algs = %q, want %q", got, tt.wantAlgs)
			}
			if len(skipped) != tt.skipped {
				t.Errorf("skipped %v, want %d", skipped, tt.skipped)
			}
		})
	}
}

func FuzzParseJWKS(f *testing.F) {
	k := keysOnce()
	f.Add(jwksOf(f, jwkOf(f, "r", &k.rsa.PublicKey), jwkOf(f, "e", &k.ec.PublicKey), jwkOf(f, "d", k.ed.Public())))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, _, err := parseJWKS(data)
		if err == nil && len(keys) == 0 {
			t.Fatal("no error and no keys")
		}
		for _, k := range keys {
			if k.pub == nil || !allowed(k.alg) {
				t.Fatalf("key %+v is not usable", k)
			}
		}
	})
}

// TestJWKSRotation rotates the served JWKS while verifications run; the
// refresher must pick up the new key, and the race detector must stay quiet.
func TestJWKSRotation(t *testing.T) {
	k := keysOnce()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "old", k.ed.Public())))
	h := newTestHook(t, Config{JWKSURL: srv.URL})
	oldTok := sign(t, gojwt.SigningMethodEdDSA, k.ed, "old", goodClaims())
	newTok := sign(t, gojwt.SigningMethodEdDSA, k.ed2, "new", goodClaims())
	if got := announce(h, testIH, query(oldTok)); got != "" {
		t.Fatalf("old key before rotation: %q", got)
	}
	if got := announce(h, testIH, query(newTok)); got != string(errUnknownKID) {
		t.Fatalf("new key before rotation: %q, want %q", got, errUnknownKID)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got := announce(h, testIH, query(oldTok)); got != "" && got != string(errUnknownKID) {
					t.Errorf("old token during rotation: %q", got)
					return
				}
			}
		})
	}
	srv.set(jwksOf(t, jwkOf(t, "new", k.ed2.Public())))
	eventually.True(t, 5*time.Second, "new key in force", func() bool { return announce(h, testIH, query(newTok)) == "" })
	eventually.True(t, 5*time.Second, "old key gone", func() bool { return announce(h, testIH, query(oldTok)) == string(errUnknownKID) })
	close(stop)
	wg.Wait()
}

// TestJWKSRetry starts while the JWKS cannot be fetched (its server answers
// 503): the hook must start, refuse with "no keys available yet", and pick
// the keys up once the JWKS is served.
func TestJWKSRetry(t *testing.T) {
	k := keysOnce()
	var up atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !up.Load() {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(jwksOf(t, jwkOf(t, "ed", k.ed.Public())))
	}))
	t.Cleanup(srv.Close)

	h := newTestHook(t, Config{JWKSURL: srv.URL + "/jwks.json"})
	tok := sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", goodClaims())
	if got := announce(h, testIH, query(tok)); got != string(errNoKeysYet) {
		t.Fatalf("before the JWKS is up: %q, want %q", got, errNoKeysYet)
	}
	if got := announce(h, testIH, bittorrent.Params{}); got != string(errMissingToken) {
		t.Errorf("no token before the JWKS is up: %q, want %q", got, errMissingToken)
	}

	up.Store(true)
	eventually.True(t, 5*time.Second, "keys arrive after the JWKS comes up", func() bool { return announce(h, testIH, query(tok)) == "" })
}

// TestJWKSFailureKeepsKeys serves errors after a good fetch: the keys stay.
func TestJWKSFailureKeepsKeys(t *testing.T) {
	k := keysOnce()
	var fail atomic.Bool
	good := jwksOf(t, jwkOf(t, "ed", k.ed.Public()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(good)
	}))
	t.Cleanup(srv.Close)
	h := newTestHook(t, Config{JWKSURL: srv.URL})
	fail.Store(true)
	err := h.Reload()
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("Reload against a failing JWKS = %v, want the status", err)
	}
	if got := announce(h, testIH, query(sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", goodClaims()))); got != "" {
		t.Errorf("after failed fetches: %q, want the old keys in force", got)
	}
}

// TestReloadFetchesAndCloseStops checks that Reload fetches at once and
// that Close may be called twice; TestCloseStopsRefresher checks that it
// stops the refresher.
func TestReloadFetchesAndCloseStops(t *testing.T) {
	k := keysOnce()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "ed", k.ed.Public())))
	h, err := newHook(Config{Param: "jwt", JWKSURL: srv.URL, JWKSRefresh: time.Hour}, nil, nil,
		knobs{now: func() time.Time { return testNow }, retryFirst: time.Millisecond, refresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("fetches after New = %d, want 1 (New waits for the first)", n)
	}
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("fetches after Reload = %d, want 2", n)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

}

// With a fast refresh, fetches stop growing after Close. The JWKS is
// served in memory on synctest's fake clock, so the refresh periods that
// must pass without a fetch take no wall time.
func TestCloseStopsRefresher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := keysOnce()
		srv := &jwksServer{}
		srv.set(jwksOf(t, jwkOf(t, "ed", k.ed.Public())))
		h, err := newHook(Config{Param: "jwt", JWKSURL: "http://jwks.test/keys", JWKSRefresh: time.Minute}, nil, nil,
			knobs{now: func() time.Time { return testNow }, retryFirst: 10 * time.Millisecond, refresh: 50 * time.Millisecond, transport: inMemory{srv}})
		if err != nil {
			t.Fatal(err)
		}
		before := srv.fetches.Load()
		eventually.True(t, 5*time.Second, "refresher fetches again", func() bool { return srv.fetches.Load() > before+1 })
		_ = h.Close()
		after := srv.fetches.Load()
		time.Sleep(200 * time.Millisecond) // fake: four refresh periods; nothing may fetch
		if n := srv.fetches.Load(); n != after {
			t.Errorf("%d fetches after Close", n-after)
		}
	})
}
