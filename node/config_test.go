package node

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDefaultsFileMatchesDefault(t *testing.T) {
	cfg, err := Parse(DefaultsYAML())
	if err != nil {
		t.Fatalf("defaults.yaml does not parse: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults.yaml and Default() differ:\nfile: %+v\ncode: %+v", cfg, want)
	}
}

// TestDefaultsFileDocumentsEveryKey checks that every key of the config
// appears in defaults.yaml with a comment, so `karuta config defaults` is a
// complete reference.
func TestDefaultsFileDocumentsEveryKey(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal(DefaultsYAML(), &doc); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if n.Kind == yaml.DocumentNode {
			walk(n.Content[0], path)
			return
		}
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := join(path, k.Value)
			present[p] = true
			if strings.TrimSpace(k.HeadComment) == "" && strings.TrimSpace(k.LineComment) == "" {
				t.Errorf("defaults.yaml: key %s has no comment", p)
			}
			walk(n.Content[i+1], p)
		}
	}
	walk(&doc, "")
	var want func(tp reflect.Type, path string)
	want = func(tp reflect.Type, path string) {
		for name, f := range yamlFields(tp) {
			p := join(path, name)
			if !present[p] {
				t.Errorf("defaults.yaml: key %s is missing", p)
			}
			if f.Type.Kind() == reflect.Struct && f.Type != durationType && f.Type != yamlNodeType {
				want(f.Type, p)
			}
		}
	}
	want(reflect.TypeFor[Config](), "")
}

func TestParseEmptyIsDefault(t *testing.T) {
	for _, in := range []string{"", "# nothing\n", "{}"} {
		cfg, err := Parse([]byte(in))
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
		}
		if !reflect.DeepEqual(cfg, Default()) {
			t.Errorf("Parse(%q) is not the default config", in)
		}
	}
}

func TestParseOverrides(t *testing.T) {
	cfg, err := Parse([]byte(`
node: {name: n1, datacenter: dc1, zone: z1}
frontends:
  http: {addr: "127.0.0.1:7000"}
  udp: {addr: ""}
tracker: {announce_interval: 10m, min_announce_interval: 5m}
cluster: {bind: "127.0.0.1:7946", join: ["a:7946", "b:7946"], replicas: 3, insecure: true}
metrics: {addr: ""}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node.Name != "n1" || cfg.Node.Datacenter != "dc1" || cfg.Node.Zone != "z1" {
		t.Errorf("node = %+v", cfg.Node)
	}
	if cfg.Frontends.HTTP.Addr != "127.0.0.1:7000" || cfg.Frontends.UDP.Addr != "" || cfg.Metrics.Addr != "" {
		t.Errorf("addrs = %q %q %q", cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr)
	}
	if cfg.Tracker.AnnounceInterval != 10*time.Minute || cfg.Tracker.MaxNumWant != Default().Tracker.MaxNumWant {
		t.Errorf("tracker = %+v", cfg.Tracker)
	}
	if cfg.Cluster.Bind != "127.0.0.1:7946" || len(cfg.Cluster.Join) != 2 || cfg.Cluster.Replicas != 3 || !cfg.Cluster.Insecure {
		t.Errorf("cluster = %+v", cfg.Cluster)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // substrings the error must contain
	}{
		{"unknown top-level key", "nodes: {}\n", []string{"nodes: line 1: unknown key", "node, log"}},
		{"unknown nested key", "frontends:\n  http:\n    adr: x\n", []string{"frontends.http.adr: line 3: unknown key", "addr"}},
		{"unknown hook option", "hooks:\n  - name: interval_variation\n    options: {probability: 0.5, foo: 1}\n", []string{"hooks[0].options.foo", "unknown key"}},
		{"unknown hook", "hooks:\n  - name: nope\n", []string{"hooks[0].name", `"nope"`, "interval_variation"}},
		{"bad hook option value", "hooks:\n  - name: interval_variation\n    options: {probability: 2}\n", []string{"hooks[0].options.probability", "2"}},
		{"wrong type", "tracker: {max_numwant: lots}\n", []string{"tracker.max_numwant", `"lots"`, "whole number"}},
		{"bad duration", "tracker: {announce_interval: soon}\n", []string{"tracker.announce_interval", `"soon"`, "duration"}},
		{"out of range", "tracker: {max_numwant: -5}\n", []string{"tracker.max_numwant", "-5", "0 to 10000"}},
		{"bad log level", "log: {level: loud}\n", []string{"log.level", `"loud"`, "debug, info, warn or error"}},
		{"bad metrics addr", "metrics: {addr: nowhere}\n", []string{"metrics.addr", `"nowhere"`}},
		{"bad join", "cluster: {join: [a:1, b]}\n", []string{"cluster.join[1]", `"b"`}},
		{"bad replicas", "cluster: {replicas: 0}\n", []string{"cluster.replicas", "1 to 7"}},
		{"bad full replication", "cluster: {full_replication: -1}\n", []string{"cluster.full_replication", "0 (off) to 16"}},
		{"list where mapping", "node: [a]\n", []string{"node: line 1: want a mapping"}},
		{"mapping where list", "cluster: {join: {a: b}}\n", []string{"cluster.join: line 1: want a list"}},
		{"lifetime below interval", "tracker: {announce_interval: 1h, min_announce_interval: 1m}\n", []string{"store.peer_lifetime", "31m0s", "tracker.announce_interval (1h0m0s)"}},
		{"both frontends off", "frontends: {http: {addr: ''}, udp: {addr: ''}}\n", []string{"enable at least one"}},
		{"not yaml", "node: [\n", []string{"config:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse accepted %q", tt.in)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestNeedsRestart(t *testing.T) {
	old := Default()
	cfg := Default()
	cfg.Log.Level = "debug"
	cfg.Tracker.AnnounceInterval = time.Hour
	cfg.Frontends.UDP.ConnectionIDKeys = []string{"0123456789abcdef0123456789abcdef"}
	if got := needsRestart(old, cfg); len(got) != 0 {
		t.Errorf("reloadable changes reported as needing a restart: %v", got)
	}
	cfg.Frontends.HTTP.Addr = ":7000"
	cfg.Store.PeerLifetime = time.Hour
	cfg.Tracker.PostQueueSize = 10
	got := needsRestart(old, cfg)
	want := []string{"frontends.http", "tracker.post_queue_size", "store"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("needsRestart = %v, want %v", got, want)
	}
	in := applied(old, cfg)
	if in.Frontends.HTTP.Addr != old.Frontends.HTTP.Addr || in.Tracker.AnnounceInterval != time.Hour || in.Log.Level != "debug" {
		t.Errorf("applied config mixes in unapplied values: %+v", in)
	}
}

func TestCheckYAMLInline(t *testing.T) {
	type inner struct {
		A int `yaml:"a"`
	}
	type outer struct {
		inner `yaml:",inline"`
		B     string `yaml:"b"`
	}
	var ok, bad yaml.Node
	if err := yaml.Unmarshal([]byte("a: 1\nb: x\n"), &ok); err != nil {
		t.Fatal(err)
	}
	if err := checkYAML(&ok, reflect.TypeFor[outer](), "s"); err != nil {
		t.Errorf("inline keys rejected: %v", err)
	}
	if err := yaml.Unmarshal([]byte("a: 1\nc: x\n"), &bad); err != nil {
		t.Fatal(err)
	}
	err := checkYAML(&bad, reflect.TypeFor[outer](), "s")
	if err == nil || !strings.Contains(err.Error(), "s.c: line 2: unknown key; known keys here: a, b") {
		t.Errorf("checkYAML = %v, want s.c unknown with known keys a, b", err)
	}
}
