package node

import (
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
