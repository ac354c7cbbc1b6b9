package node

import (
	"testing"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"
	"gopkg.in/yaml.v3"

	"github.com/karuta-tracker/karuta/hooks"
)

// TestIntervalVariationFrontends: with probability 1 every answer over
// both frontends carries an interval raised by 1 s to max_increase, and
// the raises differ.
func TestIntervalVariationFrontends(t *testing.T) {
	var opts yaml.Node
	if err := yaml.Unmarshal([]byte("{probability: 1, max_increase: 5m}"), &opts); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Hooks = []hooks.Spec{{Name: "interval_variation", Options: *opts.Content[0]}}
	})
	base := int32(n.Config().Tracker.AnnounceInterval.Seconds())
	for _, url := range []string{"http://" + n.Addrs().HTTP + "/announce", "udp://" + n.Addrs().UDP} {
		c := newClient(t, url)
		seen := map[int32]bool{}
		for i := range 20 {
			resp := c.announce(tracker.AnnounceRequest{InfoHash: infohash.T{0x71}, PeerId: peerID(byte(i)), Port: uint16(3000 + i), NumWant: -1})
			if resp.Interval <= base || resp.Interval > base+300 {
				t.Fatalf("%s: interval %d s; want above %d and at most %d", url, resp.Interval, base, base+300)
			}
			seen[resp.Interval] = true
		}
		if len(seen) < 2 {
			t.Errorf("%s: 20 answers all had interval %v; the raise is not random", url, seen)
		}
	}
}
