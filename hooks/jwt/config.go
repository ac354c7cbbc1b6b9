package jwt

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is the hook's `options`.
type Config struct {
	// Param is the query parameter (or route parameter) that carries the
	// token. The Authorization header ("Bearer <token>") is read when the
	// parameter is absent.
	Param string `yaml:"param"`
	// JWKSURL is an http or https URL serving a JSON Web Key Set.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSRefresh is how often the JWKS is fetched again.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// Keys are static public keys: each entry is either PEM text (starting
	// with "-----BEGIN") or the path of a PEM file. Files are read at start
	// and on reload.
	Keys []string `yaml:"keys"`
	// Issuer, when set, must equal the token's iss claim.
	Issuer string `yaml:"issuer"`
	// Audience, when set, must be one of the token's aud values.
	Audience string `yaml:"audience"`
	// Leeway is the clock skew allowed when checking exp and nbf.
	Leeway time.Duration `yaml:"leeway"`
	// RequireOnScrape makes scrapes need a token too, whose infohash claim
	// must match the one infohash scraped.
	RequireOnScrape bool `yaml:"require_on_scrape"`
}

// DefaultConfig reads the token from ?jwt=, refreshes a JWKS every five
// minutes and allows 30 seconds of clock skew. It names no keys, so it does
// not validate until jwks_url or keys is set.
func DefaultConfig() Config {
	return Config{Param: "jwt", JWKSRefresh: 5 * time.Minute, Leeway: 30 * time.Second}
}

// Validate reports the first bad value, naming its key. Inline PEM keys are
// parsed here; key files are read by New.
func (c Config) Validate() error {
	if c.Param == "" || strings.ContainsAny(c.Param, "&=?#/ %+") {
		return fmt.Errorf("param: %q is not a usable query parameter name", c.Param)
	}
	if c.JWKSURL == "" && len(c.Keys) == 0 {
		return errors.New("jwks_url: need at least one of jwks_url and keys")
	}
	if c.JWKSURL != "" {
		u, err := url.Parse(c.JWKSURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("jwks_url: %q must be an http or https URL", c.JWKSURL)
		}
	}
	if c.JWKSRefresh < 10*time.Second || c.JWKSRefresh > 24*time.Hour {
		return fmt.Errorf("jwks_refresh: %s is out of range; want 10s to 24h", c.JWKSRefresh)
	}
	for i, k := range c.Keys {
		switch {
		case strings.TrimSpace(k) == "":
			return fmt.Errorf("keys[%d]: is empty; want PEM text or a file path", i)
		case isInlinePEM(k):
			if _, err := parsePEMKeys([]byte(k)); err != nil {
				return fmt.Errorf("keys[%d]: %w", i, err)
			}
		}
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		return fmt.Errorf("leeway: %s is out of range; want 0 to 5m", c.Leeway)
	}
	return nil
}

// isInlinePEM tells a PEM key written into the config from a file path.
func isInlinePEM(s string) bool {
	return strings.HasPrefix(strings.TrimSpace(s), "-----BEGIN")
}
