package node

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/ring"
)

// sharedName is a node.name that more than one live process gossips
// under. Placement keeps one process per name (the latest boot, as for a
// restart), so the others own nothing and may not even count themselves
// as members: two nodes configured with the same name are one node to the
// cluster.
type sharedName struct {
	name  string
	addrs []string // their gossip addresses
}

func (d sharedName) String() string {
	return fmt.Sprintf("%d live members are named %s (gossip at %s): node.name must be unique in a cluster, and only the latest of them is in the ring; "+
		"if %s was restarted at a new address just now, this clears once the old process is declared dead",
		len(d.addrs), d.name, strings.Join(d.addrs, ", "), d.name)
}

// sharedNames lists the names that several live processes (alive or
// leaving, distinct boots) gossip under, in name order.
func sharedNames(members []ring.MemberStatus) []sharedName {
	byName := map[string][]string{}
	for _, m := range members {
		if m.State == ring.StateAlive || m.State == ring.StateLeaving {
			byName[m.Name] = append(byName[m.Name], m.Gossip)
		}
	}
	var out []sharedName
	for name, addrs := range byName {
		if len(addrs) > 1 {
			slices.Sort(addrs)
			out = append(out, sharedName{name, addrs})
		}
	}
	slices.SortFunc(out, func(a, b sharedName) int { return strings.Compare(a.name, b.name) })
	return out
}

// sharedNameGrace is how long a name must stay shared before it is logged:
// a node restarted at a new address shares its name with its old process
// until that one is declared dead, seconds later.
const sharedNameGrace = 10 * time.Second

// nameCheck logs each shared name once it has lasted sharedNameGrace, and
// again when it is resolved. Safe for concurrent use.
type nameCheck struct {
	mu     sync.Mutex
	since  map[string]time.Time
	logged map[string]bool
}

func (nc *nameCheck) check(members []ring.MemberStatus, now time.Time, log *zap.Logger) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	if nc.since == nil {
		nc.since, nc.logged = map[string]time.Time{}, map[string]bool{}
	}
	current := map[string]bool{}
	for _, d := range sharedNames(members) {
		current[d.name] = true
		first, seen := nc.since[d.name]
		if !seen {
			nc.since[d.name] = now
			continue
		}
		if !nc.logged[d.name] && now.Sub(first) >= sharedNameGrace {
			nc.logged[d.name] = true
			log.Warn("several live members share one node.name; only one of them is in the ring",
				zap.String("name", d.name), zap.Strings("gossip", d.addrs))
		}
	}
	for name := range nc.since {
		if current[name] {
			continue
		}
		if nc.logged[name] {
			log.Info("node.name no longer shared", zap.String("name", name))
		}
		delete(nc.since, name)
		delete(nc.logged, name)
	}
}
