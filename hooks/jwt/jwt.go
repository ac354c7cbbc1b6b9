// Package jwt admits announces that carry a JSON Web Token signed by a
// trusted registry for the announced infohash, with keys from a JWKS URL
// refreshed in the background and from static PEM keys.
package jwt

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Name is the hook's name in the `hooks` list of the config file.
const Name = "jwt"

// Failure reasons. Each names what failed; its metric label is the text
// after "jwt: " with underscores for spaces.
var (
	errMissingToken     = bittorrent.ClientError("jwt: missing token")
	errMalformed        = bittorrent.ClientError("jwt: malformed token")
	errAlgNotAllowed    = bittorrent.ClientError("jwt: signing algorithm not allowed")
	errNoKeysYet        = bittorrent.ClientError("jwt: no keys available yet")
	errUnknownKID       = bittorrent.ClientError("jwt: unknown key id")
	errKeyAlgMismatch   = bittorrent.ClientError("jwt: key id does not match the signing algorithm")
	errNoKeyForAlg      = bittorrent.ClientError("jwt: no key for the signing algorithm")
	errSignature        = bittorrent.ClientError("jwt: signature invalid")
	errExpired          = bittorrent.ClientError("jwt: token expired")
	errNotYetValid      = bittorrent.ClientError("jwt: token not valid yet")
	errNoExp            = bittorrent.ClientError("jwt: token has no exp claim")
	errNoIssuer         = bittorrent.ClientError("jwt: token has no iss claim")
	errIssuer           = bittorrent.ClientError("jwt: issuer mismatch")
	errNoAudience       = bittorrent.ClientError("jwt: token has no aud claim")
	errAudience         = bittorrent.ClientError("jwt: audience mismatch")
	errNoInfoHash       = bittorrent.ClientError("jwt: token has no infohash claim")
	errBadInfoHash      = bittorrent.ClientError("jwt: infohash claim is not 40 hex characters")
	errInfoHashMismatch = bittorrent.ClientError("jwt: infohash claim does not match")
	errScrapeOneHash    = bittorrent.ClientError("jwt: scrape must name exactly one infohash")
	errInvalid          = bittorrent.ClientError("jwt: invalid token")
)

var reasons = []bittorrent.ClientError{
	errMissingToken, errMalformed, errAlgNotAllowed, errNoKeysYet, errUnknownKID,
	errKeyAlgMismatch, errNoKeyForAlg, errSignature, errExpired, errNotYetValid,
	errNoExp, errNoIssuer, errIssuer, errNoAudience, errAudience, errNoInfoHash,
	errBadInfoHash, errInfoHashMismatch, errScrapeOneHash, errInvalid,
}

// Timing of JWKS fetches. retryFirst is the first wait after a failed fetch;
// it doubles up to retryMax (or jwks_refresh, if shorter).
const (
	fetchTimeout = 10 * time.Second
	startWait    = 3 * time.Second
	retryFirst   = time.Second
	retryMax     = time.Minute
	maxJWKSBytes = 1 << 20
)

// Hook is the JWT PreHook. It is safe for concurrent use: requests read the
// key set through an atomic pointer, and key rotation swaps in a new set.
type Hook struct {
	cfg    Config
	log    *zap.Logger
	parser *gojwt.Parser
	now    func() time.Time
	client *http.Client

	keys atomic.Pointer[keySet]

	// mu serialises writers of keys; static and jwks are the two halves
	// that make up a set.
	mu        sync.Mutex
	static    []key
	jwks      []key
	jwksSeq   uint64 // number of the fetch that gave jwks
	fetchSeq  atomic.Uint64
	jwksValid bool

	rejected map[bittorrent.ClientError]prometheus.Counter

	retryFirst time.Duration
	every      time.Duration // jwks_refresh
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	closed     atomic.Bool
}

// New reads cfg's static keys and, when a JWKS URL is set, starts a
// goroutine that fetches it now and every jwks_refresh; Close stops it.
// New waits up to three seconds for the first fetch, so that a reachable
// JWKS is in force before the first request, but an unreachable one is not
// fatal: it is retried in the background. log and reg may be nil.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) (*Hook, error) {
	return newHook(cfg, log, reg, knobs{now: time.Now, retryFirst: retryFirst, refresh: cfg.JWKSRefresh})
}

// knobs are what tests change: the clock, the first wait after a failed
// fetch, the refresh interval and, for tests on synctest's fake clock
// where real sockets cannot be used, the HTTP transport (nil: the
// network).
type knobs struct {
	now        func() time.Time
	retryFirst time.Duration
	refresh    time.Duration
	transport  http.RoundTripper
}

// newHook is New with the timings given.
func newHook(cfg Config, log *zap.Logger, reg prometheus.Registerer, k knobs) (*Hook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	h := &Hook{
		cfg:        cfg,
		log:        log,
		now:        k.now,
		client:     &http.Client{Timeout: fetchTimeout, Transport: k.transport},
		retryFirst: k.retryFirst,
		every:      k.refresh,
	}
	opts := []gojwt.ParserOption{
		gojwt.WithValidMethods(validAlgs),
		gojwt.WithExpirationRequired(),
		gojwt.WithLeeway(cfg.Leeway),
		gojwt.WithTimeFunc(func() time.Time { return h.now() }),
	}
	if cfg.Issuer != "" {
		opts = append(opts, gojwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, gojwt.WithAudience(cfg.Audience))
	}
	h.parser = gojwt.NewParser(opts...)
	static, err := loadStatic(cfg.Keys)
	if err != nil {
		return nil, err
	}
	h.static = static
	h.store()
	if err := h.registerMetrics(reg); err != nil {
		return nil, err
	}
	if cfg.JWKSURL != "" {
		ctx, cancel := context.WithCancel(context.Background())
		h.cancel = cancel
		first := make(chan struct{})
		h.wg.Add(1)
		go h.refresh(ctx, first)
		select {
		case <-first:
		case <-time.After(startWait):
		}
	}
	return h, nil
}

func (h *Hook) registerMetrics(reg prometheus.Registerer) error {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "karuta", Subsystem: "hook_jwt", Name: "rejected_total",
		Help: "Requests refused by the jwt hook, by reason.",
	}, []string{"reason"})
	keys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "karuta", Subsystem: "hook_jwt", Name: "keys",
		Help: "Verification keys in force (static and from the JWKS).",
	}, func() float64 { return float64(len(h.keys.Load().keys)) })
	if reg != nil {
		if err := reg.Register(vec); err != nil {
			// A second jwt hook shares the first one's counters.
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return fmt.Errorf("register metrics: %w", err)
			}
			vec = are.ExistingCollector.(*prometheus.CounterVec)
		}
		if err := reg.Register(keys); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	h.rejected = make(map[bittorrent.ClientError]prometheus.Counter, len(reasons))
	for _, r := range reasons {
		label := strings.ReplaceAll(strings.TrimPrefix(string(r), "jwt: "), " ", "_")
		h.rejected[r] = vec.WithLabelValues(label)
	}
	return nil
}

// loadStatic parses inline PEM entries and reads PEM files.
func loadStatic(entries []string) ([]key, error) {
	var keys []key
	for i, e := range entries {
		data := []byte(e)
		if !isInlinePEM(e) {
			var err error
			if data, err = os.ReadFile(e); err != nil { //nolint:gosec // G304: the key file is the operator's config
				return nil, fmt.Errorf("keys[%d]: %w", i, err)
			}
		}
		ks, err := parsePEMKeys(data)
		if err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

// store publishes the set made of the static keys and the last JWKS. The
// caller holds mu, or is New before any goroutine starts.
func (h *Hook) store() {
	ks := &keySet{
		keys:    make([]key, 0, len(h.static)+len(h.jwks)),
		waiting: h.cfg.JWKSURL != "" && !h.jwksValid,
	}
	ks.keys = append(append(ks.keys, h.static...), h.jwks...)
	h.keys.Store(ks)
}

// Reload reads the key files again and fetches the JWKS now. A failure keeps
// the keys in force and is returned.
func (h *Hook) Reload() error {
	static, err := loadStatic(h.cfg.Keys)
	if err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	h.mu.Lock()
	h.static = static
	h.store()
	h.mu.Unlock()
	if h.cfg.JWKSURL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
		defer cancel()
		if err := h.fetch(ctx); err != nil {
			return fmt.Errorf("jwt: %w", err)
		}
	}
	return nil
}

// Close stops the JWKS refresher and waits for it.
func (h *Hook) Close() error {
	if h.closed.Swap(true) || h.cancel == nil {
		return nil
	}
	h.cancel()
	h.wg.Wait()
	return nil
}

// HandleAnnounce refuses the announce unless it carries a valid token for
// its infohash.
func (h *Hook) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, _ *bittorrent.AnnounceResponse) error {
	return h.check(req.Params, req.InfoHash)
}

// HandleScrape checks the token when require_on_scrape is set. A token
// covers one infohash, so such a scrape must name exactly one.
func (h *Hook) HandleScrape(_ context.Context, req *bittorrent.ScrapeRequest, _ *bittorrent.ScrapeResponse) error {
	if !h.cfg.RequireOnScrape {
		return nil
	}
	if len(req.InfoHashes) != 1 {
		return h.reject(errScrapeOneHash)
	}
	return h.check(req.Params, req.InfoHashes[0])
}

func (h *Hook) check(p bittorrent.Params, ih bittorrent.InfoHash) error {
	tok := h.token(p)
	if tok == "" {
		return h.reject(errMissingToken)
	}
	return h.reject(h.verify(tok, ih))
}

func (h *Hook) reject(err bittorrent.ClientError) error {
	if err == "" {
		return nil
	}
	if c, ok := h.rejected[err]; ok {
		c.Inc()
	}
	return err
}

// token returns the token from the configured parameter or, failing that,
// from an Authorization header with the Bearer scheme.
func (h *Hook) token(p bittorrent.Params) string {
	if t, ok := p.Get(h.cfg.Param); ok && t != "" {
		return t
	}
	scheme, t, ok := strings.Cut(strings.TrimSpace(p.Authorization), " ")
	if ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(t)
	}
	return ""
}

// claims are the token claims the hook reads. want is the request's
// infohash, compared by Validate, which the parser calls after the
// registered claims.
type claims struct {
	gojwt.RegisteredClaims
	InfoHash *string `json:"infohash"`
	want     bittorrent.InfoHash
}

// Validate checks the infohash claim. It accepts 40 hex characters in either
// case, or 64 (a v2 infohash, of which the tracker protocol carries the
// first 20 bytes).
func (c *claims) Validate() error {
	if c.InfoHash == nil || *c.InfoHash == "" {
		return errNoInfoHash
	}
	ih, err := bittorrent.ParseInfoHash(*c.InfoHash)
	if err != nil {
		return errBadInfoHash
	}
	if ih != c.want {
		return errInfoHashMismatch
	}
	return nil
}

// verify returns "" for a valid token for ih, or the reason it is not.
func (h *Hook) verify(tok string, ih bittorrent.InfoHash) bittorrent.ClientError {
	c := &claims{want: ih}
	keys := h.keys.Load()
	t, err := h.parser.ParseWithClaims(tok, c, func(t *gojwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		found, err := keys.find(t.Method.Alg(), kid)
		if err != nil {
			return nil, err
		}
		if len(found) == 1 {
			return found[0].pub, nil
		}
		set := gojwt.VerificationKeySet{Keys: make([]gojwt.VerificationKey, len(found))}
		for i, k := range found {
			set.Keys[i] = k.pub
		}
		return set, nil
	})
	if err == nil {
		return ""
	}
	return h.reason(err, t, c)
}

// reason maps a parser error to a failure reason. Several claims may fail at
// once; the order below decides which one the client is told.
func (h *Hook) reason(err error, t *gojwt.Token, c *claims) bittorrent.ClientError {
	var ce bittorrent.ClientError
	switch {
	case errors.Is(err, gojwt.ErrTokenMalformed):
		return errMalformed
	case errors.Is(err, gojwt.ErrTokenUnverifiable):
		if errors.As(err, &ce) { // from the key lookup
			return ce
		}
		return errAlgNotAllowed // an alg the library does not know
	case errors.Is(err, gojwt.ErrTokenSignatureInvalid):
		if t != nil && t.Method != nil && !allowed(t.Method.Alg()) {
			return errAlgNotAllowed
		}
		return errSignature
	case errors.Is(err, gojwt.ErrTokenExpired):
		return errExpired
	case errors.Is(err, gojwt.ErrTokenNotValidYet):
		return errNotYetValid
	case errors.Is(err, gojwt.ErrTokenInvalidIssuer):
		return errIssuer
	case errors.Is(err, gojwt.ErrTokenInvalidAudience):
		return errAudience
	case errors.Is(err, gojwt.ErrTokenRequiredClaimMissing):
		switch {
		case c.ExpiresAt == nil:
			return errNoExp
		case h.cfg.Issuer != "" && c.Issuer == "":
			return errNoIssuer
		case h.cfg.Audience != "" && len(c.Audience) == 0:
			return errNoAudience
		}
	case errors.As(err, &ce): // from claims.Validate
		return ce
	}
	return errInvalid
}

func allowed(alg string) bool {
	for _, a := range validAlgs {
		if a == alg {
			return true
		}
	}
	return false
}
