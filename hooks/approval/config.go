// Package approval holds two PreHooks that refuse announces by list:
// client_approval matches the client's peer_id against prefixes, and
// torrent_approval matches infohashes. Each list comes from the config, a
// file that is re-read on change and on SIGHUP, or both.
package approval

import (
	"errors"
	"fmt"
	"time"
)

// Mode says what a listed entry means.
type Mode string

// Modes.
const (
	// Allow refuses everything that is not listed.
	Allow Mode = "allow"
	// Deny refuses what is listed.
	Deny Mode = "deny"
)

// Config is the options both hooks share. ClientConfig and TorrentConfig
// are this struct under the name of their hook, so each validates its
// entries its own way.
type Config struct {
	// Mode is allow (refuse what is not listed) or deny (refuse what is).
	Mode Mode `yaml:"mode"`
	// List holds entries given inline; they are combined with File's.
	List []string `yaml:"list"`
	// File names a file with one entry per line; blank lines and text from
	// # to the end of a line are ignored.
	File string `yaml:"file"`
	// CheckInterval is how often File's size, mtime and identity are
	// checked for a change; 0 turns the watcher off (SIGHUP still reloads).
	CheckInterval time.Duration `yaml:"check_interval"`
}

// ClientConfig is the options of client_approval: List and File hold
// peer_id prefixes.
type ClientConfig Config

// TorrentConfig is the options of torrent_approval: List and File hold
// hex infohashes.
type TorrentConfig Config

// defaultCheckInterval is cheap (one stat) and quick enough for operators
// who edit the file by hand.
const defaultCheckInterval = 10 * time.Second

// DefaultClientConfig checks the file every 10s. Mode and a list or file
// must be given.
func DefaultClientConfig() ClientConfig { return ClientConfig{CheckInterval: defaultCheckInterval} }

// DefaultTorrentConfig checks the file every 10s. Mode and a list or file
// must be given.
func DefaultTorrentConfig() TorrentConfig { return TorrentConfig{CheckInterval: defaultCheckInterval} }

// Validate reports the first bad value, naming its key. It does not read
// the file; New does.
func (c ClientConfig) Validate() error { return Config(c).validate(parsePrefix) }

// Validate reports the first bad value, naming its key. It does not read
// the file; New does.
func (c TorrentConfig) Validate() error {
	return Config(c).validate(func(s []byte) (string, error) {
		_, err := parseInfoHash(s)
		return "", err
	})
}

func (c Config) validate(parse func([]byte) (string, error)) error {
	switch c.Mode {
	case Allow, Deny:
	case "":
		return errors.New("mode: missing; want allow or deny")
	default:
		return fmt.Errorf("mode: %q is not allowed; want allow or deny", c.Mode)
	}
	for i, e := range c.List {
		if _, err := parse([]byte(e)); err != nil {
			return fmt.Errorf("list[%d]: %w", i, err)
		}
	}
	if c.Mode == Allow && len(c.List) == 0 && c.File == "" {
		return errors.New("list: allow mode with no list and no file would refuse everything; give list, file or both")
	}
	if c.CheckInterval != 0 && (c.CheckInterval < 10*time.Millisecond || c.CheckInterval > 24*time.Hour) {
		return fmt.Errorf("check_interval: %s is out of range; want 0 (off) or 10ms to 24h", c.CheckInterval)
	}
	return nil
}
