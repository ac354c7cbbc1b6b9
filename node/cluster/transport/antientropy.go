package transport

import "github.com/karuta-tracker/karuta/hooks/bittorrent"

// The messages of anti-entropy, by which two owners of the same swarms find
// where their copies differ and repair them without waiting for the
// swarms' peers to announce again (node/cluster/antientropy.go). The
// sender of each request only ever pushes its own copies; the receiver
// does the same in its own exchange, so after both the copies agree.

// DigestRanges is how many ranges of infohashes (by their first 12 bits)
// a DigestRequest carries a digest for.
const DigestRanges = 1 << 12

// MaxCompareSwarms is the most swarms one CompareRequest lists, about
// 900 KiB on the wire.
const MaxCompareSwarms = 1 << 15

// maxMemberName bounds the sender's name in anti-entropy requests
// (node.name is at most 128 characters).
const maxMemberName = 1024

// DigestRequest opens an exchange: the sender's digests of the swarms it
// owns together with the receiver, summed by range.
type DigestRequest struct {
	// From is the sender's member name.
	From string
	// View fingerprints the sender's view: digests only compare when both
	// place swarms the same way.
	View uint64
	// Digests holds DigestRanges sums of swarm digests, or none.
	Digests []uint64
}

// DigestReply lists the ranges whose digests differ at the receiver.
type DigestReply struct {
	Ranges []uint16
}

// SwarmDigest is one swarm's digest (see store.SwarmDigest).
type SwarmDigest struct {
	InfoHash bittorrent.InfoHash
	Digest   uint64
}

// CompareRequest lists the sender's swarms in ranges that differ, at most
// MaxCompareSwarms of them, each with its digest.
type CompareRequest struct {
	From   string
	View   uint64
	Swarms []SwarmDigest
}

// CompareReply lists, as indices into the request's Swarms, the swarms the
// receiver lacks or holds differently: those the sender repairs.
type CompareReply struct {
	Want []uint16
}

// RepairRequest carries the sender's copies of swarms for the receiver to
// merge: peers it lacks are added, and those both hold take the later
// announce. Merging is idempotent, so a request sent twice does no harm.
type RepairRequest struct {
	Swarms []RepairSwarm
}

// RepairSwarm is one swarm's copy: its snatch count and live peers.
type RepairSwarm struct {
	InfoHash bittorrent.InfoHash
	Snatches uint32
	Peers    []AgedPeer
}

// AgedPeer is a peer and how long ago it last announced, in seconds by the
// sender's clock: an age, unlike a time, means the same at the receiver
// whatever the two clocks say.
type AgedPeer struct {
	SwarmPeer
	Age uint32
}

func (*DigestRequest) isRequest()  {}
func (*CompareRequest) isRequest() {}
func (*RepairRequest) isRequest()  {}
func (*DigestReply) isReply()      {}
func (*CompareReply) isReply()     {}
