// Package peerpref ranks the peers of an answer so that an announcer meets
// peers in its own subnet first, then in its own datacenter, then the rest:
// how a fleet keeps deploy traffic inside racks. Datacenters are known by
// their address ranges, so peers rank the same whichever node of a cluster
// they were announced to.
package peerpref

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Name is the hook's name in the `hooks` list of the config file.
const Name = "peer_preference"

// Config is the hook's `options`.
type Config struct {
	// IPv4Prefix is the length of the prefix an IPv4 peer shares with the
	// announcer to count as in its subnet; 0 turns subnets off for IPv4.
	IPv4Prefix int `yaml:"ipv4_prefix"`
	// IPv6Prefix is the same for IPv6 peers.
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// Datacenters maps each datacenter's name to its address ranges in CIDR
	// notation. Where ranges nest, the most specific decides.
	Datacenters map[string][]string `yaml:"datacenters"`
	// Candidates is how many times numwant peers are drawn from the swarm
	// to choose the preferred ones from.
	Candidates int `yaml:"candidates"`
	// MaxExtraCandidates caps how many candidates are drawn beyond numwant,
	// bounding the cost of a large numwant.
	MaxExtraCandidates int `yaml:"max_extra_candidates"`
}

// DefaultConfig prefers the announcer's /24 or /64, and chooses from up to
// four times numwant candidates but at most 200 more than numwant.
func DefaultConfig() Config {
	return Config{IPv4Prefix: 24, IPv6Prefix: 64, Candidates: 4, MaxExtraCandidates: 200}
}

// Validate reports the first bad value, naming its key. Datacenters are
// checked in name order so the report does not vary between runs.
func (c Config) Validate() error {
	_, err := c.networks()
	return err
}

// network is one address range of a datacenter.
type network struct {
	prefix netip.Prefix
	dc     int // index into the sorted datacenter names
}

// networks checks c and returns its datacenters' ranges, most specific
// first.
func (c Config) networks() ([]network, error) {
	switch {
	case c.IPv4Prefix < 0 || c.IPv4Prefix > 32:
		return nil, fmt.Errorf("ipv4_prefix: %d is out of range; want 0 to 32", c.IPv4Prefix)
	case c.IPv6Prefix < 0 || c.IPv6Prefix > 128:
		return nil, fmt.Errorf("ipv6_prefix: %d is out of range; want 0 to 128", c.IPv6Prefix)
	case c.Candidates < 1 || c.Candidates > 16:
		return nil, fmt.Errorf("candidates: %d is out of range; want 1 to 16", c.Candidates)
	case c.MaxExtraCandidates < 0 || c.MaxExtraCandidates > 10000:
		return nil, fmt.Errorf("max_extra_candidates: %d is out of range; want 0 to 10000", c.MaxExtraCandidates)
	}
	names := make([]string, 0, len(c.Datacenters))
	for name := range c.Datacenters {
		names = append(names, name)
	}
	slices.Sort(names)
	var nets []network
	owner := map[netip.Prefix]string{}
	for dc, name := range names {
		if name == "" {
			return nil, fmt.Errorf("datacenters: a datacenter has an empty name")
		}
		for i, s := range c.Datacenters[name] {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("datacenters.%s[%d]: %q is not a CIDR", name, i, s)
			}
			if p.Addr().Is4In6() {
				return nil, fmt.Errorf("datacenters.%s[%d]: %q is an IPv4-mapped range; write it as IPv4", name, i, s)
			}
			p = p.Masked()
			if other, ok := owner[p]; ok {
				return nil, fmt.Errorf("datacenters.%s[%d]: %s is already in datacenter %s", name, i, p, other)
			}
			owner[p] = name
			nets = append(nets, network{prefix: p, dc: dc})
		}
	}
	slices.SortStableFunc(nets, func(a, b network) int { return cmp.Compare(b.prefix.Bits(), a.prefix.Bits()) })
	return nets, nil
}

// Hook ranks peers; it implements hooks.PeerRanker and has no other role.
// It holds only data fixed at construction, so it is safe for concurrent
// use.
type Hook struct {
	cfg  Config
	nets []network
}

// New returns the hook for cfg.
func New(cfg Config) (*Hook, error) {
	nets, err := cfg.networks()
	if err != nil {
		return nil, err
	}
	return &Hook{cfg: cfg, nets: nets}, nil
}

// Candidates returns min(candidates × n, n + max_extra_candidates).
func (h *Hook) Candidates(n int) int {
	return min(n*h.cfg.Candidates, n+h.cfg.MaxExtraCandidates)
}

// place is where an announcer is: its subnet (invalid when subnets are off
// for its family) and datacenter (-1 when no range holds it).
type place struct {
	subnet netip.Prefix
	dc     int
}

// locate returns the place of an announcer at a.
func (h *Hook) locate(a netip.Addr) place {
	a = a.Unmap().WithZone("")
	bits := h.cfg.IPv6Prefix
	if a.Is4() {
		bits = h.cfg.IPv4Prefix
	}
	var pl place
	if bits > 0 {
		pl.subnet, _ = a.Prefix(bits) // a zero prefix when a is invalid
	}
	pl.dc = h.datacenter(a)
	return pl
}

// datacenter returns the index of the datacenter holding a, -1 for none.
func (h *Hook) datacenter(a netip.Addr) int {
	for _, n := range h.nets {
		if n.prefix.Contains(a) {
			return n.dc
		}
	}
	return -1
}

// RankPeers puts the peers in the announcer's subnet first, then those in
// its datacenter, then the rest, as a stable partition: within each group
// the peers keep the source's order, which is random. It ranks all of
// peers, whatever n, so that another ranker may reorder the result. The
// groups are gathered after len(peers) in the same buffer and moved back,
// so a buffer with room for twice the candidates needs no allocation.
func (h *Hook) RankPeers(req *bittorrent.AnnounceRequest, peers []bittorrent.Peer, _ int) []bittorrent.Peer {
	if len(peers) < 2 {
		return peers
	}
	me := h.locate(req.Addr.Addr())
	if !me.subnet.IsValid() && me.dc < 0 {
		return peers // nothing to prefer
	}
	m := len(peers)
	// out collects the ranked peers in out[m:]; rest compacts, in place
	// and in order, the peers not ranked yet. If out grows, rest keeps
	// working in the old array, which still holds every candidate.
	out, rest := peers, peers[:0]
	if me.subnet.IsValid() {
		for _, p := range peers {
			if me.subnet.Contains(p.Addr.Addr().Unmap()) {
				out = append(out, p)
			} else {
				rest = append(rest, p)
			}
		}
	} else {
		rest = peers
	}
	if me.dc >= 0 {
		left := rest[:0]
		for _, p := range rest {
			if h.datacenter(p.Addr.Addr().Unmap()) == me.dc {
				out = append(out, p)
			} else {
				left = append(left, p)
			}
		}
		rest = left
	}
	out = append(out, rest...)
	copy(out, out[m:])
	return out[:m]
}
