// Package ring decides which nodes own each swarm: cluster membership over
// hashicorp/memberlist and consistent-hash placement of infohashes over the
// members.
package ring

import (
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Config is the `cluster` section. With an empty Bind the node runs alone.
type Config struct {
	// Bind is the host:port the node gossips on; empty means no cluster.
	Bind string `yaml:"bind"`
	// Advertise is the host:port other nodes reach the gossip listener at,
	// when it differs from Bind (NAT, containers); empty means Bind's.
	Advertise string `yaml:"advertise"`
	// Join lists host:port seeds to join through. A name that resolves to
	// several addresses counts as several seeds.
	Join []string `yaml:"join"`
	// Replicas is how many nodes own each swarm.
	Replicas int `yaml:"replicas"`
	// EveryDatacenter places at least one owner of every swarm in each
	// datacenter, so reads stay local to a datacenter.
	EveryDatacenter bool `yaml:"every_datacenter"`
	// FullReplication makes every member own every swarm while the cluster
	// has at most this many members, whatever Replicas says: reads are then
	// always local. 0 turns it off.
	FullReplication int `yaml:"full_replication"`
	// SecretKeys are base64 AES keys (16, 24 or 32 bytes) that encrypt and
	// authenticate gossip and the node-to-node channel. The first is used
	// to send; all are accepted, so keys can be rotated.
	SecretKeys []string `yaml:"secret_keys"`
	// Label keeps two clusters sharing a network apart: nodes only talk to
	// nodes with the same label.
	Label string `yaml:"label"`
	// Profile tunes failure detection: lan, wan (multi-datacenter links) or
	// local (tests on one machine).
	Profile Profile `yaml:"profile"`
	// DataBind is the host:port of the node-to-node data channel; empty
	// means Bind's host with Bind's port plus one.
	DataBind string `yaml:"data_bind"`
	// JoinRetry is the longest wait between attempts to reach a seed.
	JoinRetry time.Duration `yaml:"join_retry"`
}

// Profile is a set of memberlist timings for a kind of network.
type Profile string

// The profiles Config.Profile allows.
const (
	// ProfileLAN suits one datacenter: memberlist's LAN timings.
	ProfileLAN Profile = "lan"
	// ProfileWAN suits links between datacenters: slower probes, more
	// patience before declaring a member dead.
	ProfileWAN Profile = "wan"
	// ProfileLocal suits nodes on one machine, as in tests: fast
	// detection and exchange.
	ProfileLocal Profile = "local"
)

// DefaultConfig returns a single-node setup with two owners per swarm once
// clustered, and every swarm on every node while there are at most three.
func DefaultConfig() Config {
	return Config{Replicas: 2, FullReplication: 3, Profile: ProfileLAN, JoinRetry: 30 * time.Second}
}

// Validate reports the first bad value, naming its key.
func (c Config) Validate() error {
	for _, f := range []struct{ key, val string }{{"bind", c.Bind}, {"advertise", c.Advertise}, {"data_bind", c.DataBind}} {
		if f.val == "" {
			continue
		}
		if err := checkHostPort(f.val); err != nil {
			return fmt.Errorf("%s: %q %w", f.key, f.val, err)
		}
	}
	for i, j := range c.Join {
		if err := checkHostPort(j); err != nil {
			return fmt.Errorf("join[%d]: %q %w", i, j, err)
		}
	}
	if c.Replicas < 1 || c.Replicas > 7 {
		return fmt.Errorf("replicas: %d is out of range; want 1 to 7", c.Replicas)
	}
	if c.FullReplication < 0 || c.FullReplication > 16 {
		return fmt.Errorf("full_replication: %d is out of range; want 0 (off) to 16 members", c.FullReplication)
	}
	if _, err := c.Keys(); err != nil {
		return err
	}
	if len(c.Label) > 255 {
		return fmt.Errorf("label: %d bytes is too long; want at most 255", len(c.Label))
	}
	switch c.Profile {
	case ProfileLAN, ProfileWAN, ProfileLocal:
	default:
		return fmt.Errorf("profile: %q is not allowed; want lan, wan or local", c.Profile)
	}
	if c.JoinRetry < 100*time.Millisecond || c.JoinRetry > time.Hour {
		return fmt.Errorf("join_retry: %s is out of range; want 100ms to 1h", c.JoinRetry)
	}
	return nil
}

// placement is the Options every node derives from the same Config.
func (c Config) placement(vnodes int) Options {
	return Options{VNodes: vnodes, EveryDatacenter: c.EveryDatacenter, FullReplication: c.FullReplication}
}

// Placement is the placement Options of c, with the default vnodes.
func (c Config) Placement() Options { return c.placement(0) }

// Keys decodes SecretKeys. Errors name the key by index, never by value.
func (c Config) Keys() ([][]byte, error) {
	keys := make([][]byte, 0, len(c.SecretKeys))
	for i, s := range c.SecretKeys {
		k, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("secret_keys[%d]: not valid base64; want 16, 24 or 32 bytes base64-encoded (e.g. from `head -c32 /dev/urandom | base64`)", i)
		}
		switch len(k) {
		case 16, 24, 32:
		default:
			return nil, fmt.Errorf("secret_keys[%d]: decodes to %d bytes; want 16, 24 or 32", i, len(k))
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("is not host:port: %w", err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("has port %q; want 0 to 65535", port)
	}
	return nil
}
