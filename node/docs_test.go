package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocsYAMLParses parses every ```yaml block in the README and docs/, so
// documented examples cannot rot.
func TestDocsYAMLParses(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../README.md")
	blocks := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, block := range yamlBlocks(string(data)) {
			blocks++
			if _, err := Parse([]byte(block)); err != nil {
				t.Errorf("%s: yaml block %d does not parse: %v\n%s", f, i+1, err, block)
			}
		}
	}
	if blocks == 0 {
		t.Fatal("found no yaml blocks in the docs; is the glob right?")
	}
}

// TestConfigDocShowsDefaults keeps docs/config.md's reference block equal to
// the embedded defaults that `karuta config defaults` prints.
func TestConfigDocShowsDefaults(t *testing.T) {
	data, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "```yaml\n"+string(DefaultsYAML())+"```") {
		t.Error("docs/config.md does not contain node/defaults.yaml verbatim; regenerate its last block")
	}
}

func yamlBlocks(md string) []string {
	var blocks []string
	for {
		_, rest, ok := strings.Cut(md, "```yaml\n")
		if !ok {
			return blocks
		}
		block, after, ok := strings.Cut(rest, "```")
		if !ok {
			return blocks
		}
		blocks = append(blocks, block)
		md = after
	}
}
