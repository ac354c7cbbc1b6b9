package ring

import (
	"fmt"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// View is what one node knows of the cluster at one moment: the placement
// ring over the live members, where to reach each of them, and which one
// is this node. Views are immutable; membership publishes a new one on
// every change, and Epoch orders them.
type View struct {
	*Ring
	// DataAddrs[i] is the node-to-node data address of Members()[i].
	DataAddrs []string
	// Boots[i] identifies the process behind Members()[i]: a node that
	// restarts under the same name comes back with a new one, and with an
	// empty store.
	Boots []string
	// Self is this node's index in Members(), or -1 when it is not (yet)
	// a member.
	Self int
	// Replicas is the configured owner count; OwnerCount may be larger
	// with Options.EveryDatacenter.
	Replicas int
	// Epoch increases by one with each view a node publishes. It is local
	// to the node: two nodes' epochs are not comparable.
	Epoch uint64
}

// NodeInfo is a member as the cluster data plane needs it.
type NodeInfo struct {
	Member
	// DataAddr is the host:port of the node's data channel.
	DataAddr string `json:"data"`
	// Boot is chosen at random each time the node starts; see View.Boots.
	Boot string `json:"boot,omitempty"`
}

// NewView builds a view over nodes; self names this node.
func NewView(nodes []NodeInfo, self string, replicas int, opts Options, epoch uint64) (*View, error) {
	members := make([]Member, len(nodes))
	byName := make(map[string]NodeInfo, len(nodes))
	for i, n := range nodes {
		members[i] = n.Member
		byName[n.Name] = n
	}
	r, err := New(members, opts)
	if err != nil {
		return nil, err
	}
	if replicas < 1 {
		return nil, fmt.Errorf("ring: replicas %d; want at least 1", replicas)
	}
	v := &View{Ring: r, DataAddrs: make([]string, len(members)), Boots: make([]string, len(members)), Self: r.Index(self), Replicas: replicas, Epoch: epoch}
	for i, m := range r.Members() {
		v.DataAddrs[i], v.Boots[i] = byName[m.Name].DataAddr, byName[m.Name].Boot
	}
	return v, nil
}

// OwnersOf appends the indices of ih's owners, primary first.
func (v *View) OwnersOf(ih bittorrent.InfoHash, dst []int) []int {
	return v.Owners(ih, v.Replicas, dst)
}

// Owns reports whether this node is one of ih's owners. scratch avoids an
// allocation; pass a slice with room for the owner count, or nil.
func (v *View) Owns(ih bittorrent.InfoHash, scratch []int) bool {
	if v.Self < 0 {
		return false
	}
	for _, o := range v.OwnersOf(ih, scratch[:0]) {
		if o == v.Self {
			return true
		}
	}
	return false
}
