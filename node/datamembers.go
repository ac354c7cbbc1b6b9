package node

import (
	"net"
	"net/netip"

	"github.com/karuta-tracker/karuta/ring"
)

// dataMembers answers the data channel's questions (transport.Members)
// from the gossip membership: which names are current members, which
// member a data address belongs to, and which addresses members are known
// at (which only orders connections that must wait, never refuses one).
// Before gossip starts only this node is a member. Safe for concurrent
// use.
type dataMembers struct {
	c *clustered
}

// current lists the members that may use the data channel: alive
// (suspects included, as in the ring) or leaving (still handing over).
func (d dataMembers) current() []ring.MemberStatus {
	m := d.c.membership()
	if m == nil {
		return []ring.MemberStatus{{NodeInfo: ring.NodeInfo{Member: ring.Member{Name: d.c.id.Name}, DataAddr: d.c.tr.Addr()}, State: "alive"}}
	}
	all := m.Members()
	out := all[:0]
	for _, s := range all {
		if s.State == "alive" || s.State == "leaving" {
			out = append(out, s)
		}
	}
	return out
}

// hosts are the IP addresses s is known at: its data channel's, when that
// is an IP literal, and its gossip address's.
func hosts(s ring.MemberStatus) []netip.Addr {
	var out []netip.Addr
	for _, hp := range []string{s.DataAddr, s.Gossip} {
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			continue
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func atHost(s ring.MemberStatus, ip netip.Addr) bool {
	for _, h := range hosts(s) {
		if h == ip {
			return true
		}
	}
	return false
}

func (d dataMembers) HostIsMember(ip netip.Addr) bool {
	for _, s := range d.current() {
		if atHost(s, ip) {
			return true
		}
	}
	return false
}

func (d dataMembers) NameAt(addr string) (string, bool) {
	for _, s := range d.current() {
		if s.DataAddr == addr {
			return s.Name, true
		}
	}
	return "", false
}

func (d dataMembers) IsMember(name string) bool {
	for _, s := range d.current() {
		if s.Name == name {
			return true
		}
	}
	return false
}
