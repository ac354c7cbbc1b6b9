package cluster

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

func TestOwnersEnforceTheirOwnLimits(t *testing.T) { synctest.Test(t, testOwnersEnforceTheirOwnLimits) }

// testOwnersEnforceTheirOwnLimits floods a with new torrents that b owns
// too: a takes them all, b only as many as its own max_swarms allows, and
// neither anti-entropy nor the forwards push b past it. The flood at a
// costs b no more than its limit.
func testOwnersEnforceTheirOwnLimits(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	a, b := tc.start("a"), tc.start("b")
	b.store.SetLimits(store.Limits{MaxSwarms: 100})
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	tc.waitWhole("a", "b")
	var flood []bittorrent.Change
	for i := range 1000 {
		flood = append(flood, putAt(ihN(i), 8, i, false))
	}
	for i := 0; i < len(flood); i += 100 {
		if err := a.c.Admit(flood[i].InfoHash, flood[i].Peer.Addr); err != nil {
			t.Fatalf("a refuses announce %d without limits of its own: %v", i, err)
		}
		a.c.Apply(flood[i : i+100])
	}
	tc.waitSettled("a", "b")
	for range 3 { // forwards, then anti-entropy passes
		time.Sleep(tc.cfg.RepairInterval)
		synctest.Wait()
	}
	if got := a.store.Stats().Swarms; got != 1000 {
		t.Errorf("a holds %d swarms, want all 1000", got)
	}
	if got := b.store.Stats().Swarms; got != 100 {
		t.Errorf("b holds %d swarms, want its max_swarms, 100", got)
	}
	if err := b.c.Admit(ihN(5000), flood[0].Peer.Addr); err == nil {
		t.Error("b admits a new torrent at its limit")
	}
}
