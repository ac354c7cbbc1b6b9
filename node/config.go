package node

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"gopkg.in/yaml.v3"

	httpfront "github.com/karuta-tracker/karuta/frontends/http"
	"github.com/karuta-tracker/karuta/frontends/udp"
	"github.com/karuta-tracker/karuta/frontends/webtorrent"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/node/cluster"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// Config is a node's whole configuration, one section per component.
type Config struct {
	Node      IdentityConfig  `yaml:"node"`
	Log       LogConfig       `yaml:"log"`
	Frontends FrontendsConfig `yaml:"frontends"`
	Tracker   hooks.Config    `yaml:"tracker"`
	Hooks     []hooks.Spec    `yaml:"hooks"`
	Store     store.Config    `yaml:"store"`
	Metrics   MetricsConfig   `yaml:"metrics"`
	Cluster   ClusterConfig   `yaml:"cluster"`
}

// ClusterConfig is the `cluster` section: membership and placement keys
// (ring) and data-plane keys (node/cluster) side by side.
type ClusterConfig struct {
	// Insecure allows a cluster without secret_keys or certificates, whose gossip is
	// plain and whose data channel anyone who reaches it can write to.
	// Without it such a config is refused (see insecureCluster).
	Insecure    bool `yaml:"insecure"`
	ring.Config `yaml:",inline"`
	Data        cluster.Config `yaml:",inline"`
	// TLS selects the data channel's certificate mode.
	TLS transport.Config `yaml:"tls"`
}

func (c ClusterConfig) validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if err := c.Data.Validate(); err != nil {
		return err
	}
	return c.TLS.Validate()
}

// IdentityConfig names the node and places it for replica placement and
// peer preference.
type IdentityConfig struct {
	// Name must be unique in a cluster; empty means the host name.
	Name       string `yaml:"name"`
	Datacenter string `yaml:"datacenter"`
	Zone       string `yaml:"zone"`
}

// LogConfig selects the log format and level.
type LogConfig struct {
	// Format is json or console.
	Format string `yaml:"format"`
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
}

// FrontendsConfig holds one section per frontend.
type FrontendsConfig struct {
	HTTP httpfront.Config `yaml:"http"`
	UDP  udp.Config       `yaml:"udp"`
	// WebTorrent is off unless its addr is set.
	WebTorrent webtorrent.Config `yaml:"webtorrent"`
}

// MetricsConfig is the operations listener: /metrics, /healthz, /readyz,
// /cluster and, if enabled, /debug/pprof/. None of it is authenticated, so
// it listens on loopback unless told otherwise.
type MetricsConfig struct {
	// Addr is the listen address; empty disables the listener. Anything
	// but a loopback address is allowed, with a warning at start.
	Addr string `yaml:"addr"`
	// Pprof serves the Go profiler under /debug/pprof/. Off by default: a
	// profile costs CPU, and its contents help an attacker.
	Pprof bool `yaml:"pprof"`
}

// Default returns the configuration used when no file is given: HTTP and
// UDP on :6969 and metrics on loopback port 6880.
func Default() Config {
	return Config{
		Log: LogConfig{Format: "json", Level: "info"},
		Frontends: FrontendsConfig{
			HTTP:       httpfront.DefaultConfig(),
			UDP:        udp.DefaultConfig(),
			WebTorrent: webtorrent.DefaultConfig(),
		},
		Tracker: hooks.DefaultConfig(),
		Store:   store.DefaultConfig(),
		Metrics: MetricsConfig{Addr: "127.0.0.1:6880"},
		Cluster: ClusterConfig{Config: ring.DefaultConfig(), Data: cluster.DefaultConfig(), TLS: transport.DefaultConfig()},
	}
}

//go:embed defaults.yaml
var defaultsYAML []byte

// DefaultsYAML returns the default configuration as a commented YAML
// document, as printed by `karuta config defaults`.
func DefaultsYAML() []byte { return bytes.Clone(defaultsYAML) }

// Parse reads a YAML document over the defaults and validates the result.
// Errors name the offending key with its full path.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if err := checkYAML(&doc, reflect.TypeFor[Config](), ""); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if len(doc.Content) > 0 {
		if err := doc.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
	}
	nilEmptySlices(reflect.ValueOf(&cfg))
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Load reads and parses a config file.
func Load(path string) (Config, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the operator names the config file
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close() //nolint:errcheck // read-only: a failed close loses nothing
	data, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return Config{}, fmt.Errorf("config: read %s: %w", path, err)
	}
	return Parse(data)
}

// Validate reports the first bad value with its full key path, the value
// and what is allowed.
func (c Config) Validate() error {
	sections := []struct {
		prefix   string
		validate func() error
	}{
		{"node.", c.Node.validate},
		{"log.", c.Log.validate},
		{"frontends.http.", c.Frontends.HTTP.Validate},
		{"frontends.udp.", c.Frontends.UDP.Validate},
		{"frontends.webtorrent.", c.Frontends.WebTorrent.Validate},
		{"tracker.", c.Tracker.Validate},
		{"store.", c.Store.Validate},
		{"metrics.", c.Metrics.validate},
		{"cluster.", c.Cluster.validate},
	}
	for _, s := range sections {
		if err := s.validate(); err != nil {
			return fmt.Errorf("config: %s%w", s.prefix, err)
		}
	}
	for i, spec := range c.Hooks {
		if _, err := parseHook(spec); err != nil {
			return fmt.Errorf("config: hooks[%d].%w", i, err)
		}
	}
	if c.Store.PeerLifetime <= c.Tracker.AnnounceInterval {
		return fmt.Errorf("config: store.peer_lifetime: %s is not longer than tracker.announce_interval (%s); peers would expire between their announces", c.Store.PeerLifetime, c.Tracker.AnnounceInterval)
	}
	if err := c.Cluster.checkSecure(); err != nil {
		return err
	}
	if err := checkListeners(c); err != nil {
		return err
	}
	if c.Frontends.HTTP.Addr == "" && c.Frontends.UDP.Addr == "" && c.Frontends.WebTorrent.Addr == "" {
		return errors.New("config: frontends: frontends.http.addr, frontends.udp.addr and frontends.webtorrent.addr are all empty; enable at least one")
	}
	return nil
}

func (c IdentityConfig) validate() error {
	for _, f := range []struct{ key, val string }{{"name", c.Name}, {"datacenter", c.Datacenter}, {"zone", c.Zone}} {
		if len(f.val) > 128 {
			return fmt.Errorf("%s: %d characters is too long; want at most 128", f.key, len(f.val))
		}
	}
	return nil
}

func (c LogConfig) validate() error {
	switch c.Format {
	case "json", "console":
	default:
		return fmt.Errorf("format: %q is not allowed; want json or console", c.Format)
	}
	switch c.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("level: %q is not allowed; want debug, info, warn or error", c.Level)
	}
	return nil
}

func (c MetricsConfig) validate() error {
	if c.Addr == "" {
		return nil
	}
	if err := checkListenAddr(c.Addr); err != nil {
		return fmt.Errorf("addr: %q %w", c.Addr, err)
	}
	return nil
}
