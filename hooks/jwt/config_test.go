package jwt

import (
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	k := keysOnce()
	ok := func(mod func(*Config)) Config {
		c := DefaultConfig()
		c.JWKSURL = "https://registry.example/.well-known/jwks.json"
		mod(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		want string // error prefix, "" for valid
	}{
		{"jwks only", ok(func(*Config) {}), ""},
		{"keys only", Config{Param: "jwt", JWKSRefresh: time.Minute, Keys: []string{pemOf(t, k.ed.Public()), "/etc/karuta/key.pem"}}, ""},
		{"neither", DefaultConfig(), "jwks_url: need at least one of jwks_url and keys"},
		{"ftp", ok(func(c *Config) { c.JWKSURL = "ftp://x" }), `jwks_url: "ftp://x" must be an http or https URL`},
		{"no host", ok(func(c *Config) { c.JWKSURL = "https:///jwks" }), "jwks_url:"},
		{"negative leeway", ok(func(c *Config) { c.Leeway = -time.Second }), "leeway: -1s is out of range; want 0 to 5m"},
		{"huge leeway", ok(func(c *Config) { c.Leeway = time.Hour }), "leeway:"},
		{"zero leeway", ok(func(c *Config) { c.Leeway = 0 }), ""},
		{"fast refresh", ok(func(c *Config) { c.JWKSRefresh = time.Second }), "jwks_refresh: 1s is out of range"},
		{"empty param", ok(func(c *Config) { c.Param = "" }), "param:"},
		{"param with &", ok(func(c *Config) { c.Param = "a&b" }), "param:"},
		{"empty key", ok(func(c *Config) { c.Keys = []string{" "} }), "keys[0]: is empty"},
		{"bad inline PEM", ok(func(c *Config) { c.Keys = []string{"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"} }), "keys[0]:"},
		{"private key PEM", ok(func(c *Config) {
			c.Keys = []string{"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}
		}), `keys[0]: PEM block "PRIVATE KEY" is not a public key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("Validate = %v, want an error starting %q", err, tt.want)
			}
		})
	}
}
