package jwt

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// jwksHook is a hook verifying against a JWKS with kids rsa, ec and ed.
func jwksHook(t *testing.T) *Hook {
	k := keysOnce()
	srv := newJWKSServer(t, jwksOf(t,
		jwkOf(t, "rsa", &k.rsa.PublicKey), jwkOf(t, "ec", &k.ec.PublicKey), jwkOf(t, "ed", k.ed.Public())))
	return newTestHook(t, Config{JWKSURL: srv.URL, Issuer: "registry", Audience: "karuta", Leeway: 30 * time.Second})
}

func TestVerify(t *testing.T) {
	k := keysOnce()
	h := jwksHook(t)
	with := func(mod func(gojwt.MapClaims)) gojwt.MapClaims {
		c := goodClaims()
		mod(c)
		return c
	}
	good := goodClaims()
	tests := []struct {
		name string
		tok  string
		want bittorrent.ClientError
	}{
		{"RS256", sign(t, gojwt.SigningMethodRS256, k.rsa, "rsa", good), ""},
		{"ES256", sign(t, gojwt.SigningMethodES256, k.ec, "ec", good), ""},
		{"EdDSA", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", good), ""},
		{"no kid tries every key of the alg", sign(t, gojwt.SigningMethodES256, k.ec, "", good), ""},
		{"upper-case infohash", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) {
			c["infohash"] = strings.ToUpper(testIH.String())
		})), ""},
		{"v2 infohash, 64 hex", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) {
			c["infohash"] = testIH.String() + strings.Repeat("ab", 12)
		})), ""},
		{"aud list", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { c["aud"] = []string{"other", "karuta"} })), ""},

		{"expired", sign(t, gojwt.SigningMethodRS256, k.rsa, "rsa", with(func(c gojwt.MapClaims) { c["exp"] = testNow.Add(-31 * time.Second).Unix() })), errExpired},
		{"expired within leeway", sign(t, gojwt.SigningMethodRS256, k.rsa, "rsa", with(func(c gojwt.MapClaims) { c["exp"] = testNow.Add(-29 * time.Second).Unix() })), ""},
		{"expired at leeway", sign(t, gojwt.SigningMethodRS256, k.rsa, "rsa", with(func(c gojwt.MapClaims) { c["exp"] = testNow.Add(-30 * time.Second).Unix() })), errExpired},
		{"nbf in future", sign(t, gojwt.SigningMethodES256, k.ec, "ec", with(func(c gojwt.MapClaims) { c["nbf"] = testNow.Add(31 * time.Second).Unix() })), errNotYetValid},
		{"nbf at leeway", sign(t, gojwt.SigningMethodES256, k.ec, "ec", with(func(c gojwt.MapClaims) { c["nbf"] = testNow.Add(30 * time.Second).Unix() })), ""},
		{"no exp", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { delete(c, "exp") })), errNoExp},
		{"wrong issuer", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { c["iss"] = "evil" })), errIssuer},
		{"no issuer", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { delete(c, "iss") })), errNoIssuer},
		{"wrong audience", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { c["aud"] = "other" })), errAudience},
		{"no audience", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { delete(c, "aud") })), errNoAudience},
		{"wrong infohash", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { c["infohash"] = strings.Repeat("00", 20) })), errInfoHashMismatch},
		{"no infohash", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { delete(c, "infohash") })), errNoInfoHash},
		{"bad infohash", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { c["infohash"] = "xyz" })), errBadInfoHash},
		{"infohash not a string", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) { c["infohash"] = 42 })), errMalformed},
		{"expiry outranks infohash", sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", with(func(c gojwt.MapClaims) {
			c["exp"] = testNow.Add(-time.Hour).Unix()
			c["infohash"] = strings.Repeat("00", 20)
		})), errExpired},

		{"signed by another key", sign(t, gojwt.SigningMethodRS256, k.rsa2, "rsa", good), errSignature},
		{"another EC key", sign(t, gojwt.SigningMethodES256, k.ec2, "ec", good), errSignature},
		{"another Ed25519 key, no kid", sign(t, gojwt.SigningMethodEdDSA, k.ed2, "", good), errSignature},
		{"tampered payload", tamper(sign(t, gojwt.SigningMethodEdDSA, k.ed, "ed", good)), errSignature},
		{"unknown kid", sign(t, gojwt.SigningMethodEdDSA, k.ed, "nope", good), errUnknownKID},
		{"kid of another key type", sign(t, gojwt.SigningMethodES256, k.ec, "rsa", good), errKeyAlgMismatch},
		{"alg none", sign(t, gojwt.SigningMethodNone, gojwt.UnsafeAllowNoneSignatureType, "", good), errAlgNotAllowed},
		{"HS256", sign(t, gojwt.SigningMethodHS256, []byte("secret"), "rsa", good), errAlgNotAllowed},
		{"RS384", sign(t, gojwt.SigningMethodRS384, k.rsa, "rsa", good), errAlgNotAllowed},
		{"unknown alg", b64u([]byte(`{"alg":"XX256","typ":"JWT"}`)) + "." + strings.Split(sign(t, gojwt.SigningMethodEdDSA, k.ed, "", good), ".")[1] + ".c2ln", errAlgNotAllowed},
		{"malformed", "not.a.jwt", errMalformed},
		{"two segments", "abc.def", errMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := announce(h, testIH, query(tt.tok)); got != string(tt.want) {
				t.Errorf("announce = %q, want %q", got, tt.want)
			}
		})
	}
}

// tamper changes the issuer in a signed token's payload, keeping the
// signature.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		panic(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(bytes.Replace(payload, []byte("registry"), []byte("registrz"), 1))
	return strings.Join(parts, ".")
}

func TestTokenSources(t *testing.T) {
	k := keysOnce()
	h := newTestHook(t, Config{Param: "token", Keys: []string{pemOf(t, k.ed.Public())}})
	tok := sign(t, gojwt.SigningMethodEdDSA, k.ed, "", goodClaims())
	other := sign(t, gojwt.SigningMethodEdDSA, k.ed, "", gojwt.MapClaims{"exp": testNow.Add(time.Hour).Unix(), "infohash": strings.Repeat("11", 20)})
	tests := []struct {
		name string
		p    bittorrent.Params
		want bittorrent.ClientError
	}{
		{"query", bittorrent.Params{Query: "info_hash=x&token=" + tok + "&port=1"}, ""},
		{"route", bittorrent.Params{Route: []bittorrent.Param{{Key: "token", Value: tok}}}, ""},
		{"bearer", bittorrent.Params{Authorization: "Bearer " + tok}, ""},
		{"bearer, any case", bittorrent.Params{Authorization: "bearer  " + tok}, ""},
		{"query wins over header", bittorrent.Params{Query: "token=" + tok, Authorization: "Bearer " + other}, ""},
		{"header used when query lacks param", bittorrent.Params{Query: "jwt=" + tok, Authorization: "Bearer " + other}, errInfoHashMismatch},
		{"basic auth is no token", bittorrent.Params{Authorization: "Basic " + tok}, errMissingToken},
		{"empty param", bittorrent.Params{Query: "token="}, errMissingToken},
		{"nothing", bittorrent.Params{}, errMissingToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := announce(h, testIH, tt.p); got != string(tt.want) {
				t.Errorf("announce = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestScrape(t *testing.T) {
	k := keysOnce()
	tok := sign(t, gojwt.SigningMethodEdDSA, k.ed, "", goodClaims())
	other := bittorrent.InfoHash{1}
	scrape := func(h *Hook, p bittorrent.Params, ihs ...bittorrent.InfoHash) string {
		err := h.HandleScrape(context.Background(), &bittorrent.ScrapeRequest{InfoHashes: ihs, Params: p}, &bittorrent.ScrapeResponse{})
		if err == nil {
			return ""
		}
		return bittorrent.FailureReason(err)
	}
	off := newTestHook(t, Config{Keys: []string{pemOf(t, k.ed.Public())}})
	if got := scrape(off, bittorrent.Params{}, testIH, other); got != "" {
		t.Errorf("scrape without token, require_on_scrape off: %q, want admitted", got)
	}
	on := newTestHook(t, Config{Keys: []string{pemOf(t, k.ed.Public())}, RequireOnScrape: true})
	tests := []struct {
		name string
		p    bittorrent.Params
		ihs  []bittorrent.InfoHash
		want bittorrent.ClientError
	}{
		{"matching", query(tok), []bittorrent.InfoHash{testIH}, ""},
		{"missing token", bittorrent.Params{}, []bittorrent.InfoHash{testIH}, errMissingToken},
		{"other hash", query(tok), []bittorrent.InfoHash{other}, errInfoHashMismatch},
		{"two hashes", query(tok), []bittorrent.InfoHash{testIH, testIH}, errScrapeOneHash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := scrape(on, tt.p, tt.ihs...); got != string(tt.want) {
				t.Errorf("scrape = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestStaticKeys checks inline PEM and files together, that a kid unknown to
// the set falls back to the static keys, and that Reload rereads files.
func TestStaticKeys(t *testing.T) {
	k := keysOnce()
	file := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(file, []byte(pemOf(t, &k.rsa.PublicKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newTestHook(t, Config{Keys: []string{pemOf(t, &k.ec.PublicKey), file}})
	for name, tok := range map[string]string{
		"inline":               sign(t, gojwt.SigningMethodES256, k.ec, "", goodClaims()),
		"file":                 sign(t, gojwt.SigningMethodRS256, k.rsa, "", goodClaims()),
		"kid falls back":       sign(t, gojwt.SigningMethodRS256, k.rsa, "registry-2030", goodClaims()),
		"other key, file type": sign(t, gojwt.SigningMethodRS256, k.rsa2, "", goodClaims()),
		"no key of the type":   sign(t, gojwt.SigningMethodEdDSA, k.ed, "", goodClaims()),
	} {
		want := ""
		switch name {
		case "other key, file type":
			want = string(errSignature)
		case "no key of the type":
			want = string(errNoKeyForAlg)
		}
		if got := announce(h, testIH, query(tok)); got != want {
			t.Errorf("%s: announce = %q, want %q", name, got, want)
		}
	}

	// Rotate the file to rsa2: old tokens fail, new ones pass.
	if err := os.WriteFile(file, []byte(pemOf(t, &k.rsa2.PublicKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := announce(h, testIH, query(sign(t, gojwt.SigningMethodRS256, k.rsa2, "", goodClaims()))); got != "" {
		t.Errorf("after reload, new key: %q", got)
	}
	if got := announce(h, testIH, query(sign(t, gojwt.SigningMethodRS256, k.rsa, "", goodClaims()))); got != string(errSignature) {
		t.Errorf("after reload, old key: %q, want %q", got, errSignature)
	}

	// A broken file keeps the keys in force.
	if err := os.WriteFile(file, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err == nil || !strings.Contains(err.Error(), "keys[1]") {
		t.Errorf("Reload of a broken file = %v, want an error naming keys[1]", err)
	}
	if got := announce(h, testIH, query(sign(t, gojwt.SigningMethodRS256, k.rsa2, "", goodClaims()))); got != "" {
		t.Errorf("after failed reload: %q, want the old keys in force", got)
	}
}

func TestNewFailsOnMissingKeyFile(t *testing.T) {
	_, err := New(Config{Param: "jwt", JWKSRefresh: time.Minute, Keys: []string{filepath.Join(t.TempDir(), "none.pem")}}, nil, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "keys[0]:") {
		t.Errorf("New = %v, want an error naming keys[0]", err)
	}
}

func TestMetrics(t *testing.T) {
	k := keysOnce()
	reg := prometheus.NewRegistry()
	h, err := New(Config{Param: "jwt", JWKSRefresh: time.Minute, Keys: []string{pemOf(t, k.ed.Public())}}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	announce(h, testIH, bittorrent.Params{})
	announce(h, testIH, bittorrent.Params{})
	announce(h, testIH, query("x.y.z"))
	if got := testutil.ToFloat64(h.rejected[errMissingToken]); got != 2 {
		t.Errorf("missing_token = %v, want 2", got)
	}
	if got := testutil.ToFloat64(h.rejected[errMalformed]); got != 1 {
		t.Errorf("malformed_token = %v, want 1", got)
	}
	n, err := testutil.GatherAndCount(reg, "karuta_hook_jwt_rejected_total", "karuta_hook_jwt_keys")
	if err != nil || n != len(reasons)+1 {
		t.Errorf("gathered %d series (%v), want %d", n, err, len(reasons)+1)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
	// A second hook on the same registry shares the counters.
	if _, err := New(Config{Param: "jwt", JWKSRefresh: time.Minute, Keys: []string{pemOf(t, k.ed.Public())}}, nil, reg); err != nil {
		t.Errorf("second hook: %v", err)
	}
}

// TestConcurrentVerify runs verifications from many goroutines while static
// keys are reloaded, for the race detector.
func TestConcurrentVerify(t *testing.T) {
	k := keysOnce()
	h := newTestHook(t, Config{Keys: []string{pemOf(t, k.ed.Public())}})
	tok := sign(t, gojwt.SigningMethodEdDSA, k.ed, "", goodClaims())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if got := announce(h, testIH, query(tok)); got != "" {
					t.Errorf("announce = %q", got)
					return
				}
			}
		})
	}
	for range 50 {
		if err := h.Reload(); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
}

func BenchmarkVerify(b *testing.B) {
	k := keysOnce()
	srv := newJWKSServer(b, jwksOf(b,
		jwkOf(b, "rsa", &k.rsa.PublicKey), jwkOf(b, "ec", &k.ec.PublicKey), jwkOf(b, "ed", k.ed.Public())))
	h := newTestHook(b, Config{JWKSURL: srv.URL, Issuer: "registry", Audience: "karuta"})
	for _, bb := range []struct {
		name string
		tok  string
	}{
		{"RS256", sign(b, gojwt.SigningMethodRS256, k.rsa, "rsa", goodClaims())},
		{"ES256", sign(b, gojwt.SigningMethodES256, k.ec, "ec", goodClaims())},
		{"EdDSA", sign(b, gojwt.SigningMethodEdDSA, k.ed, "ed", goodClaims())},
	} {
		b.Run(bb.name, func(b *testing.B) {
			p := query(bb.tok)
			b.ReportAllocs()
			for b.Loop() {
				if got := announce(h, testIH, p); got != "" {
					b.Fatal(got)
				}
			}
		})
	}
}
