package node

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDeployConfigsLoad keeps the Karuta configs shipped under deploy/
// (the image's default, the compose nodes', the Kubernetes one) valid as
// the config schema changes.
func TestDeployConfigsLoad(t *testing.T) {
	var files []string
	for _, glob := range []string{"../deploy/docker/karuta.yaml", "../deploy/compose/n*.yaml", "../deploy/kubernetes/karuta.yaml"} {
		m, err := filepath.Glob(glob)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 5 {
		t.Fatalf("found %d deploy configs (%v); are the globs right?", len(files), files)
	}
	for _, f := range files {
		cfg, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		// In a container, the loopback default would hide /readyz from
		// the probes and /metrics from Prometheus.
		if loopbackAddr(cfg.Metrics.Addr) {
			t.Errorf("%s: metrics.addr %q is loopback; a container's probes and scraper cannot reach it", f, cfg.Metrics.Addr)
		}
	}
}

// TestDeployTestConfigsParse keeps the configs the deploy stage builds
// (deploy/test/run.sh: a compose node's file with deploy/test/hooks*.yaml
// appended) valid, so the stage fails on behaviour, not on a stale key.
func TestDeployTestConfigsParse(t *testing.T) {
	for _, tc := range []struct{ node, hooks string }{
		{"n1", "hooks.yaml"}, {"n2", "hooks.yaml"}, {"n3", "hooks-jwt.yaml"},
	} {
		base, err := os.ReadFile("../deploy/compose/" + tc.node + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		hooks, err := os.ReadFile("../deploy/test/" + tc.hooks)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := Parse(append(base, hooks...))
		if err != nil {
			t.Errorf("%s.yaml + %s: %v", tc.node, tc.hooks, err)
			continue
		}
		if len(cfg.Hooks) < 2 {
			t.Errorf("%s.yaml + %s: %d hooks, want rate_limit and torrent_approval at least", tc.node, tc.hooks, len(cfg.Hooks))
		}
	}
}
