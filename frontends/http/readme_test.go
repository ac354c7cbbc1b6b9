package http

import (
	"bytes"
	"os"
	"regexp"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestReadmeConfigParses keeps the README's example configuration honest:
// it must decode into Config without unknown keys and validate.
func TestReadmeConfigParses(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no yaml block")
	}
	var doc struct {
		Frontends struct {
			HTTP yaml.Node `yaml:"http"`
		} `yaml:"frontends"`
	}
	if err := yaml.Unmarshal(m[1], &doc); err != nil {
		t.Fatalf("README yaml: %v", err)
	}
	cfg := DefaultConfig()
	dec := doc.Frontends.HTTP
	// Decode strictly through a re-marshal, so unknown keys are caught.
	raw, err := yaml.Marshal(&dec)
	if err != nil {
		t.Fatal(err)
	}
	d := yaml.NewDecoder(bytes.NewReader(raw))
	d.KnownFields(true)
	if err := d.Decode(&cfg); err != nil {
		t.Fatalf("README frontends.http: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("README frontends.http does not validate: %v", err)
	}
	if cfg.ReadTimeout != DefaultConfig().ReadTimeout || len(cfg.TrustedProxies) != 2 || len(cfg.AnnounceRoutes) != 2 {
		t.Errorf("README config decoded as %+v", cfg)
	}
}
