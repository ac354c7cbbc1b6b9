package hooks

import (
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the announce policy the chain applies to every request, under
// the `tracker` key.
type Config struct {
	// AnnounceInterval is how long clients are asked to wait between
	// announces.
	AnnounceInterval time.Duration `yaml:"announce_interval"`
	// MinAnnounceInterval is the shortest wait clients may use.
	MinAnnounceInterval time.Duration `yaml:"min_announce_interval"`
	// DefaultNumWant is the number of peers returned when a client does not
	// ask for a number.
	DefaultNumWant int `yaml:"default_numwant"`
	// MaxNumWant caps the number of peers a client can ask for.
	MaxNumWant int `yaml:"max_numwant"`
	// MaxScrapeHashes caps the infohashes in one scrape. The default, 100,
	// answers BEP 15's full scrape packet (74 infohashes) and an HTTP
	// scrape of as many as a default 8 KiB request line holds.
	MaxScrapeHashes int `yaml:"max_scrape_hashes"`
	// PostQueueSize bounds the queue of answered announces waiting for the
	// PostHooks. When it is full, announces are dropped and counted.
	PostQueueSize int `yaml:"post_queue_size"`
	// PostWorkers is the number of goroutines draining the post queue.
	PostWorkers int `yaml:"post_workers"`
}

// DefaultConfig returns the announce policy used when the config file says
// nothing.
func DefaultConfig() Config {
	return Config{
		AnnounceInterval:    30 * time.Minute,
		MinAnnounceInterval: 15 * time.Minute,
		DefaultNumWant:      50,
		MaxNumWant:          200,
		MaxScrapeHashes:     100,
		PostQueueSize:       65536,
		PostWorkers:         1,
	}
}

// Validate reports the first bad value, naming its key.
func (c Config) Validate() error {
	switch {
	case c.AnnounceInterval < time.Second || c.AnnounceInterval > 24*time.Hour:
		return fmt.Errorf("announce_interval: %s is out of range; want 1s to 24h", c.AnnounceInterval)
	case c.MinAnnounceInterval < time.Second || c.MinAnnounceInterval > c.AnnounceInterval:
		return fmt.Errorf("min_announce_interval: %s is out of range; want 1s to announce_interval (%s)", c.MinAnnounceInterval, c.AnnounceInterval)
	case c.MaxNumWant < 0 || c.MaxNumWant > 10000:
		return fmt.Errorf("max_numwant: %d is out of range; want 0 to 10000", c.MaxNumWant)
	case c.DefaultNumWant < 0 || c.DefaultNumWant > c.MaxNumWant:
		return fmt.Errorf("default_numwant: %d is out of range; want 0 to max_numwant (%d)", c.DefaultNumWant, c.MaxNumWant)
	case c.MaxScrapeHashes < 1 || c.MaxScrapeHashes > 10000:
		return fmt.Errorf("max_scrape_hashes: %d is out of range; want 1 to 10000", c.MaxScrapeHashes)
	case c.PostQueueSize < 1 || c.PostQueueSize > 1<<24:
		return fmt.Errorf("post_queue_size: %d is out of range; want 1 to %d", c.PostQueueSize, 1<<24)
	case c.PostWorkers < 1 || c.PostWorkers > 256:
		return fmt.Errorf("post_workers: %d is out of range; want 1 to 256", c.PostWorkers)
	}
	return nil
}

// Spec names an optional hook and carries its options, as written in the
// `hooks` list of the config file. The node decodes Options into the named
// hook's own Config.
type Spec struct {
	Name    string    `yaml:"name"`
	Options yaml.Node `yaml:"options"`
}
