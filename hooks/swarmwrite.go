package hooks

import (
	"context"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// ChangeSink receives the swarm changes derived from answered announces:
// the local store on a single node, or the forwarder that sends them to the
// swarms' owners in a cluster. Apply must not keep the slice.
type ChangeSink interface {
	Apply(changes []bittorrent.Change)
}

// SwarmWriter is the PostHook that turns answered announces into swarm
// changes and hands them to a ChangeSink, one batch per call.
// It keeps no state, so several post workers may call it at once; the one
// allocation per batch (up to 256 announces) is off the request path.
type SwarmWriter struct {
	sink ChangeSink
}

// NewSwarmWriter returns a SwarmWriter feeding sink.
func NewSwarmWriter(sink ChangeSink) *SwarmWriter { return &SwarmWriter{sink: sink} }

// AfterAnnounces applies the batch's changes in arrival order.
func (w *SwarmWriter) AfterAnnounces(_ context.Context, reqs []bittorrent.AnnounceRequest) {
	changes := make([]bittorrent.Change, len(reqs))
	for i := range reqs {
		changes[i] = bittorrent.ChangeFor(&reqs[i])
	}
	w.sink.Apply(changes)
}
