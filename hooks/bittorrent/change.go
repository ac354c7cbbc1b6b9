package bittorrent

// ChangeOp is the kind of write an announce makes to its swarm.
type ChangeOp uint8

// Change operations. Their values are part of the node-to-node wire format,
// so they must never be renumbered.
const (
	// OpPut adds the peer or refreshes it, as seeder or leecher.
	OpPut ChangeOp = 1
	// OpRemove removes the peer (event=stopped).
	OpRemove ChangeOp = 2
	// OpComplete makes the peer a seeder and counts one snatch
	// (event=completed).
	OpComplete ChangeOp = 3
)

// String names the operation for logs and metrics.
func (op ChangeOp) String() string {
	switch op {
	case OpPut:
		return "put"
	case OpRemove:
		return "remove"
	case OpComplete:
		return "complete"
	}
	return "unknown"
}

// Change is one write to a swarm, derived from an announce. It is a plain
// value with no pointers into request buffers, so it can be queued, batched
// and sent to another node.
type Change struct {
	InfoHash InfoHash
	Peer     Peer
	Op       ChangeOp
	Seeder   bool
}

// ChangeFor derives the change an announce makes to its swarm.
func ChangeFor(r *AnnounceRequest) Change {
	c := Change{
		InfoHash: r.InfoHash,
		Peer:     Peer{ID: r.PeerID, Addr: r.Addr},
		Op:       OpPut,
		Seeder:   r.Seeder(),
	}
	switch r.Event {
	case EventStopped:
		c.Op = OpRemove
	case EventCompleted:
		c.Op = OpComplete
		c.Seeder = true
	}
	return c
}
