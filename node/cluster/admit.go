package cluster

import (
	"net/netip"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Admit tells the Responder whether an announcer new to swarm ih may join
// it (hooks.Admitter). Each node enforces its own limits: for a swarm this
// node owns, its store decides, as it will when the change is applied;
// for a swarm owned elsewhere the announce goes through, and the owners
// apply their limits when the forward arrives, counting what they leave
// out (karuta_store_refused_total{stage="apply"}). A flood at one node
// thus costs each owner at most what its own limits allow.
func (c *Cluster) Admit(ih bittorrent.InfoHash, announcer netip.AddrPort) error {
	v := c.view.Load()
	var buf [8]int
	if ownsAll(v) || v.Owns(ih, buf[:0]) {
		return c.store.Admit(ih, announcer)
	}
	return nil
}
