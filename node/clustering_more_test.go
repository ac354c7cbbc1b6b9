package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"
	"go.uber.org/zap/zaptest/observer"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// These tests run whole nodes with real memberlist gossip and the real TCP
// data channel on loopback. Their deadlines are generous because gossip
// and failure detection take seconds, more under -race on two cores.

const (
	// convergeWithin bounds waiting for a membership change to reach every
	// view and for the handoff passes it starts to settle.
	convergeWithin = 20 * time.Second
	// visibleWithin bounds waiting for announced peers to show everywhere.
	visibleWithin = 15 * time.Second
	// moreSwarms is how many swarms each test spreads over the cluster.
	moreSwarms = 30
)

// throughout checks cond repeatedly for d and fails the test at the first
// error: for things that must never happen. The period watched is what is
// being tested, so it waits out d on the real clock (gossip over real
// sockets cannot run on synctest's).
func throughout(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func nodeName(n *Node) string { return n.Config().Node.Name }

// converged reports nil once every node's ring holds exactly the given
// nodes, each at its current data address, and its last handoff pass
// settled on that view.
func converged(nodes []*Node) error {
	want := make(map[string]string, len(nodes))
	for _, n := range nodes {
		want[nodeName(n)] = n.Addrs().Data
	}
	for _, n := range nodes {
		st, _ := n.ClusterStatus()
		got := make(map[string]string, len(st.Ring.Members))
		for _, m := range st.Ring.Members {
			got[m.Name] = m.Data
		}
		same := len(got) == len(want)
		for name, addr := range want {
			same = same && got[name] == addr
		}
		if !same {
			var gossip []string
			for _, m := range st.Members {
				gossip = append(gossip, fmt.Sprintf("%s@%s:%s", m.Name, m.Gossip, m.State))
			}
			return fmt.Errorf("%s's ring is %v; want %v (its gossip members: %v)", nodeName(n), got, want, gossip)
		}
		if !st.Ring.Settled {
			return fmt.Errorf("%s has not settled epoch %d", nodeName(n), st.Ring.Epoch)
		}
	}
	return nil
}

// startConverged starts a cluster of the named nodes, each joining the
// first, and waits for every view to hold all of them.
func startConverged(t *testing.T, names ...string) []*Node {
	t.Helper()
	var nodes []*Node
	for i, name := range names {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		nodes = append(nodes, startClusterNode(t, name, join, nil))
	}
	eventually.NoError(t, convergeWithin, "cluster of "+strings.Join(names, ", ")+" converges", func() error { return converged(nodes) })
	return nodes
}

// swarmPorts lists, per swarm, the ports of the peers announced to it.
type swarmPorts map[bittorrent.InfoHash][]int

func (s swarmPorts) sorted() []bittorrent.InfoHash {
	ihs := make([]bittorrent.InfoHash, 0, len(s))
	for ih := range s {
		ihs = append(ihs, ih)
	}
	slices.SortFunc(ihs, func(a, b bittorrent.InfoHash) int { return bytes.Compare(a[:], b[:]) })
	return ihs
}

// announceSwarms announces two peers to each of moreSwarms swarms: a
// leecher over UDP to one node and a seeder over HTTP to the next, so every
// node receives announces for swarms it does and does not own.
func announceSwarms(t *testing.T, nodes []*Node, tag byte) swarmPorts {
	t.Helper()
	udpc := make([]*client, len(nodes))
	httpc := make([]*client, len(nodes))
	for i, n := range nodes {
		udpc[i] = newClient(t, "udp://"+n.Addrs().UDP)
		httpc[i] = newClient(t, "http://"+n.Addrs().HTTP+"/announce")
	}
	want := swarmPorts{}
	for i := range moreSwarms {
		ih := infohash.T{byte(i), tag, 0x6d}
		leecher, seeder := 10000+i, 20000+i
		udpc[i%len(nodes)].announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('l'), Left: 100, Port: uint16(leecher), NumWant: -1, Event: tracker.Started})
		httpc[(i+1)%len(nodes)].announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('s'), Port: uint16(seeder), NumWant: -1, Event: tracker.Started})
		want[bittorrent.InfoHash(ih)] = []int{leecher, seeder}
	}
	return want
}

// probeAddr announces the reads; no announced peer uses its port.
var probeAddr = netip.MustParseAddrPort("127.0.0.1:1")

// visibleAt reports nil when n answers an announce for every swarm with
// every peer announced to it, reading through the data plane as the
// frontends do.
func visibleAt(n *Node, want swarmPorts) error {
	for _, ih := range want.sorted() {
		peers, _, _ := n.cl.data.AnnouncePeers(ih, probeAddr, false, 200, nil)
		for _, port := range want[ih] {
			if !slices.ContainsFunc(peers, func(p bittorrent.Peer) bool { return int(p.Addr.Port()) == port }) {
				return fmt.Errorf("%s: swarm %x lacks peer :%d (has %v)", nodeName(n), ih[:3], port, peers)
			}
		}
	}
	return nil
}

func visibleEverywhere(nodes []*Node, want swarmPorts) error {
	for _, n := range nodes {
		if err := visibleAt(n, want); err != nil {
			return err
		}
	}
	return nil
}

// placedOnOwners reports nil when every swarm is stored on exactly the
// nodes that own it by their own view: new owners were filled and former
// owners let go.
func placedOnOwners(nodes []*Node, want swarmPorts) error {
	for _, ih := range want.sorted() {
		holders := 0
		for _, n := range nodes {
			_, _, stored := n.store.Swarm(ih, 1, nil)
			owns := n.cl.data.View().Owns(ih, nil)
			if stored != owns {
				return fmt.Errorf("%s: swarm %x stored %v, owned %v", nodeName(n), ih[:3], stored, owns)
			}
			if stored {
				holders++
			}
		}
		if want := nodes[0].Config().Cluster.Replicas; holders != want {
			return fmt.Errorf("swarm %x is stored on %d nodes; want %d", ih[:3], holders, want)
		}
	}
	return nil
}

// crash stops n as a kill would, as far as the rest of the cluster can
// tell: its frontends stop answering and its gossip and data channel go
// silent without a leave, and its store is dropped with whatever it held.
// The post hooks are stopped first only so that no goroutine of the
// crashed node writes into the closed data plane; the tests crash a node
// once its announces are applied, so they hold nothing.
//
// It runs under n's shutdown once, so a later Shutdown (startNode's
// cleanup) returns at once: run on a crashed node, Shutdown would wait for
// a view without the node that never comes (the data plane stopped
// following views) and then call Leave on a memberlist already shut down,
// which panics.
func crash(n *Node) error {
	var errs []error
	ran := false
	n.shutdownOnce.Do(func() {
		ran = true
		n.ready.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if n.http != nil {
			errs = append(errs, n.http.Shutdown(ctx))
		}
		if n.udp != nil {
			errs = append(errs, n.udp.Shutdown(ctx))
		}
		errs = append(errs, n.chain.Close(ctx))
		if m := n.cl.membership(); m != nil {
			errs = append(errs, m.Close())
		}
		close(n.cl.views.stop)
		n.cl.views.done.Wait()
		errs = append(errs, n.cl.data.Close(), n.store.Close())
		if n.ops != nil {
			errs = append(errs, n.ops.Close())
		}
	})
	if !ran {
		return errors.New("crash: node already stopped")
	}
	return errors.Join(errs...)
}

// TestClusterNodeCrashLosesNoPeer kills one of three nodes without a
// leave. With replicas 2 every swarm it owned has another owner, so the
// survivors must still answer with every peer once failure detection has
// dropped it, and with two nodes left both must hold every swarm.
func TestClusterNodeCrashLosesNoPeer(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	nodes := startConverged(t, "c1", "c2", "c3")
	want := announceSwarms(t, nodes, 0xc7)
	eventually.NoError(t, visibleWithin, "every peer visible from every node", func() error { return visibleEverywhere(nodes, want) })

	dead, survivors := nodes[0], nodes[1:]
	if err := crash(dead); err != nil {
		t.Fatalf("crash %s: %v", nodeName(dead), err)
	}
	start := time.Now()
	eventually.NoError(t, convergeWithin, "survivors drop the crashed node and settle", func() error { return converged(survivors) })
	t.Logf("survivors converged %s after the crash", time.Since(start).Round(time.Millisecond))
	for _, n := range survivors {
		st, _ := n.ClusterStatus()
		for _, m := range st.Members {
			if m.Name == nodeName(dead) && m.State != "dead" {
				t.Errorf("%s lists the crashed node as %q; want dead", nodeName(n), m.State)
			}
		}
	}

	eventually.NoError(t, visibleWithin, "every peer still visible from both survivors", func() error { return visibleEverywhere(survivors, want) })
	// Both survivors own every swarm now; each must hold a copy, so that
	// losing either one later loses nothing either.
	eventually.NoError(t, visibleWithin, "every swarm stored on both survivors", func() error {
		for _, n := range survivors {
			for _, ih := range want.sorted() {
				if _, _, ok := n.store.Swarm(ih, 1, nil); !ok {
					return fmt.Errorf("%s does not store swarm %x", nodeName(n), ih[:3])
				}
			}
		}
		return nil
	})
}

// TestClusterRollingRestart restarts each node of three in turn, the way a
// deploy does: a graceful shutdown, then a new process under the same name
// with an empty store and new ports. No peer may go missing at any step,
// and every member must take the new process in: a member that missed the
// old process's leave holds its name at the old address, and memberlist
// refuses the new one ("Conflicting address") until it has declared the
// old one dead.
func TestClusterRollingRestart(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	nodes := startConverged(t, "r1", "r2", "r3")
	want := announceSwarms(t, nodes, 0x4e)
	eventually.NoError(t, visibleWithin, "every peer visible from every node", func() error { return visibleEverywhere(nodes, want) })

	for i := range nodes {
		name := nodeName(nodes[i])
		var survivors []*Node
		for j, n := range nodes {
			if j != i {
				survivors = append(survivors, n)
			}
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := nodes[i].Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatalf("step %d: Shutdown %s: %v", i, name, err)
		}
		t.Logf("step %d: %s shut down in %s", i, name, time.Since(start).Round(time.Millisecond))
		eventually.NoError(t, convergeWithin, fmt.Sprintf("step %d: survivors settle without %s", i, name), func() error { return converged(survivors) })
		eventually.NoError(t, visibleWithin, fmt.Sprintf("step %d: every peer visible with %s down", i, name), func() error { return visibleEverywhere(survivors, want) })

		start = time.Now()
		nodes[i] = startClusterNode(t, name, []string{survivors[0].Addrs().Gossip}, nil)
		eventually.NoError(t, convergeWithin, fmt.Sprintf("step %d: restarted %s rejoins and all settle", i, name), func() error { return converged(nodes) })
		t.Logf("step %d: %s back and settled in %s", i, name, time.Since(start).Round(time.Millisecond))
		eventually.NoError(t, visibleWithin, fmt.Sprintf("step %d: every peer visible after %s restarted", i, name), func() error { return visibleEverywhere(nodes, want) })
		eventually.NoError(t, visibleWithin, fmt.Sprintf("step %d: restarted %s refilled", i, name), func() error { return placedOnOwners(nodes, want) })
	}
}

// TestClusterJoinsKeepSwarmsVisible grows a cluster from three nodes to
// five; every join moves swarms, and none may blank out.
func TestClusterJoinsKeepSwarmsVisible(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	nodes := startConverged(t, "j1", "j2", "j3")
	want := announceSwarms(t, nodes, 0x10)
	eventually.NoError(t, visibleWithin, "every peer visible from every node", func() error { return visibleEverywhere(nodes, want) })

	for _, name := range []string{"j4", "j5"} {
		seed := nodes[len(nodes)-1].Addrs().Gossip
		nodes = append(nodes, startClusterNode(t, name, []string{seed}, nil))
		eventually.NoError(t, convergeWithin, name+" joins and all settle", func() error { return converged(nodes) })
		eventually.NoError(t, visibleWithin, "every peer visible after "+name+" joined", func() error { return visibleEverywhere(nodes, want) })
		eventually.NoError(t, visibleWithin, "swarms on their owners after "+name+" joined", func() error { return placedOnOwners(nodes, want) })
	}
}

// TestClusterWrongKeyCannotJoin points nodes from another cluster (another
// secret key, or the right key under another label) at a running one:
// neither side may see the other, nor any of its peers, nor accept its
// data-channel requests.
func TestClusterWrongKeyCannotJoin(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	nodes := startConverged(t, "k1", "k2")
	otherKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 32))
	xKey, xKeyLogs := startClusterNodeLogged(t, "x-key", []string{nodes[0].Addrs().Gossip}, func(c *Config) { c.Cluster.SecretKeys = []string{otherKey} })
	xLabel, xLabelLogs := startClusterNodeLogged(t, "x-label", []string{nodes[0].Addrs().Gossip}, func(c *Config) { c.Cluster.Label = "another-cluster" })
	outsiders := []*Node{xKey, xLabel}

	onlyMembers := func(n *Node, names ...string) error {
		st, _ := n.ClusterStatus()
		var got []string
		for _, m := range st.Members {
			got = append(got, m.Name)
		}
		var ring []string
		for _, m := range st.Ring.Members {
			ring = append(ring, m.Name)
		}
		if !slices.Equal(got, names) || !slices.Equal(ring, names) {
			return fmt.Errorf("%s lists members %v and ring %v; want %v", nodeName(n), got, ring, names)
		}
		return nil
	}
	// Outsiders stay out while each tries, and fails, to join five times.
	eventually.True(t, convergeWithin, "each outsider retries its join five times", func() bool {
		for _, n := range nodes {
			if err := onlyMembers(n, "k1", "k2"); err != nil {
				t.Fatalf("outsiders stay out: %v", err)
			}
		}
		for _, x := range outsiders {
			if err := onlyMembers(x, nodeName(x)); err != nil {
				t.Fatalf("outsiders stay out: %v", err)
			}
		}
		for _, logs := range []*observer.ObservedLogs{xKeyLogs, xLabelLogs} {
			if logs.FilterMessage("no other seed answered; retrying").Len() < 5 {
				return false
			}
		}
		return true
	})

	// A peer announced to an outsider stays there.
	for i, x := range outsiders {
		ih := infohash.T{0xee, byte(i)}
		port := 30000 + i
		newClient(t, "udp://"+x.Addrs().UDP).announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('x'), Port: uint16(port), NumWant: -1})
		want := swarmPorts{bittorrent.InfoHash(ih): {port}}
		eventually.NoError(t, visibleWithin, nodeName(x)+" has its own peer", func() error { return visibleAt(x, want) })
		throughout(t, time.Second, "peer announced to "+nodeName(x)+" stays out of k1 and k2", func() error {
			for _, n := range nodes {
				if peers, counts, _ := n.cl.data.AnnouncePeers(bittorrent.InfoHash(ih), probeAddr, false, 200, nil); len(peers) > 0 || counts != (bittorrent.Counts{}) {
					return fmt.Errorf("%s answers with %v, counts %+v", nodeName(n), peers, counts)
				}
				if _, _, ok := n.store.Swarm(bittorrent.InfoHash(ih), 1, nil); ok {
					return fmt.Errorf("%s stores the swarm", nodeName(n))
				}
			}
			return nil
		})
	}

	// Nor can an outsider write to a member over the data channel, even
	// knowing its address.
	for i, x := range outsiders {
		ih := bittorrent.InfoHash{0xef, byte(i)}
		change := bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Peer: bittorrent.Peer{ID: peerID('y'), Addr: netip.MustParseAddrPort("127.0.0.1:31000")}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := x.cl.tr.Call(ctx, nodes[0].Addrs().Data, &transport.ApplyRequest{Changes: []bittorrent.Change{change}})
		cancel()
		if err == nil {
			t.Errorf("%s's data channel request to k1 succeeded; want it refused", nodeName(x))
		}
		if _, _, ok := nodes[0].store.Swarm(ih, 1, nil); ok {
			t.Errorf("k1 stored a change sent by %s", nodeName(x))
		}
	}
}
