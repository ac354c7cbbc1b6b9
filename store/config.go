package store

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Config tunes the in-memory store, under the `store` key.
type Config struct {
	// PeerLifetime is how long a peer stays in its swarm without announcing
	// again. It should exceed the announce interval clients are given, or
	// well-behaved peers drop out between announces.
	PeerLifetime time.Duration `yaml:"peer_lifetime"`
	// GCInterval is how often expired peers and empty swarms are collected.
	// A peer may outlive PeerLifetime by up to this much.
	GCInterval time.Duration `yaml:"gc_interval"`
	// Shards is the number of independently locked parts the swarms are
	// spread over, a power of two. More shards mean less lock contention
	// between announces for different swarms.
	Shards int `yaml:"shards"`
	// SnapshotFile, if set, is where the node keeps its swarms across
	// restarts: written every SnapshotInterval and on shutdown, loaded at
	// start (see SaveSwarmFile). Empty keeps swarms in memory only.
	SnapshotFile string `yaml:"snapshot_file"`
	// SnapshotInterval is how often SnapshotFile is rewritten, bounding
	// what a crash loses.
	SnapshotInterval time.Duration `yaml:"snapshot_interval"`
	// Limits bound the swarms and peers held; see Limits.
	Limits `yaml:",inline"`

	// Clock returns the current time; nil means time.Now. Tests set it to
	// control peer ages.
	Clock func() time.Time `yaml:"-"`
}

// DefaultConfig returns the store settings used when the config file says
// nothing: peers live one minute longer than a 30-minute announce interval.
func DefaultConfig() Config {
	return Config{
		PeerLifetime: 31 * time.Minute,
		GCInterval:   time.Minute,
		Shards:       1024,

		SnapshotInterval: 5 * time.Minute,
		Limits:           Limits{MaxPeersPerSource: 64},
	}
}

// Upper limits Validate accepts: a week covers any sane announce interval,
// and more shards than 65536 only cost memory.
const (
	maxPeerLifetime = 7 * 24 * time.Hour
	maxShards       = 1 << 16
)

// Validate reports the first bad value, naming its key relative to `store`.
func (c Config) Validate() error {
	switch {
	case c.PeerLifetime < time.Second || c.PeerLifetime > maxPeerLifetime:
		return fmt.Errorf("peer_lifetime: %s is out of range; want 1s to 168h", c.PeerLifetime)
	case c.GCInterval < time.Second || c.GCInterval > c.PeerLifetime:
		return fmt.Errorf("gc_interval: %s is out of range; want 1s to peer_lifetime (%s)", c.GCInterval, c.PeerLifetime)
	case c.Shards < 1 || c.Shards > maxShards || c.Shards&(c.Shards-1) != 0:
		return fmt.Errorf("shards: %d is not a power of two from 1 to %d", c.Shards, maxShards)
	case c.SnapshotInterval < 10*time.Second || c.SnapshotInterval > 24*time.Hour:
		return fmt.Errorf("snapshot_interval: %s is out of range; want 10s to 24h", c.SnapshotInterval)
	case c.SnapshotFile != "" && (strings.HasSuffix(c.SnapshotFile, "/") || filepath.Base(c.SnapshotFile) == "."):
		return fmt.Errorf("snapshot_file: %q names a directory; want a file path such as /var/lib/karuta/swarms", c.SnapshotFile)
	}
	return c.Limits.validate()
}
