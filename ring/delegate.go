package ring

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// nodeMeta is the metadata gossiped with each node. JSON keeps it readable
// in memberlist's debug output and lets fields be added without breaking
// older nodes.
type nodeMeta struct {
	Datacenter string `json:"dc,omitempty"`
	Zone       string `json:"zone,omitempty"`
	Name       string `json:"name,omitempty"`
	Data       string `json:"data"`
	Boot       string `json:"boot,omitempty"`
	// Leaving marks a node handing its swarms over before it leaves;
	// placement already leaves it out.
	Leaving bool `json:"leaving,omitempty"`
}

func decodeMeta(n *memberlist.Node) (info NodeInfo, leaving bool, err error) {
	var meta nodeMeta
	if err := json.Unmarshal(n.Meta, &meta); err != nil {
		return NodeInfo{}, false, fmt.Errorf("metadata %q: %w", n.Meta, err)
	}
	if meta.Data == "" {
		return NodeInfo{}, false, errors.New("metadata has no data address")
	}
	name := meta.Name
	if name == "" {
		name = n.Name
	}
	return NodeInfo{Member: Member{Name: name, Datacenter: meta.Datacenter, Zone: meta.Zone}, DataAddr: meta.Data, Boot: meta.Boot}, meta.Leaving, nil
}

// note records a member's state from a memberlist event and asks for a
// rebuild. It runs under memberlist's locks and must not call back into it.
// memberlist does not say whether a node that is gone failed or left (the
// state in the node it passes is not kept up to date), so a node that
// announced it was leaving counts as left and any other as dead.
func (m *Membership) note(n *memberlist.Node, gone bool) {
	info, leaving, err := decodeMeta(n)
	if err != nil {
		// Kept for operators to see, but out of placement: without a
		// data address nobody could send it anything.
		m.log.Warn("member with unreadable metadata left out of the ring", zap.String("member", n.Name), zap.Error(err))
		info = NodeInfo{Member: Member{Name: n.Name}}
	}
	m.mu.Lock()
	prev := m.known[n.Name]
	state := StateAlive
	switch {
	case gone && prev != nil && (prev.State == StateLeaving || prev.State == StateLeft):
		state = StateLeft
	case gone:
		state = StateDead
	case leaving:
		state = StateLeaving
	}
	since := time.Now()
	if prev != nil && prev.State == state {
		since = prev.Since
	}
	m.known[n.Name] = &MemberStatus{NodeInfo: info, Gossip: n.Address(), State: state, Since: since}
	m.mu.Unlock()
	m.markDirty()
}

type events struct{ m *Membership }

func (e events) NotifyJoin(n *memberlist.Node)   { e.m.note(n, false) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.m.note(n, true) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.m.note(n, false) }

// delegate gives memberlist this node's metadata. Karuta sends no user
// messages over gossip: swarm data travels on the data channel.
type delegate struct{ m *Membership }

func (d delegate) NodeMeta(limit int) []byte {
	self := d.m.self.Load()
	b, err := json.Marshal(nodeMeta{Name: self.Name, Datacenter: self.Datacenter, Zone: self.Zone, Data: self.DataAddr, Boot: self.Boot, Leaving: d.m.leaving.Load()})
	if err != nil || len(b) > limit {
		d.m.log.Error("node metadata does not fit gossip", zap.Int("bytes", len(b)), zap.Int("limit", limit))
		return nil
	}
	return b
}
func (delegate) NotifyMsg([]byte)                {}
func (delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (delegate) LocalState(bool) []byte          { return nil }
func (delegate) MergeRemoteState([]byte, bool)   {}
