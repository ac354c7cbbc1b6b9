package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// Anti-entropy brings the owners' copies of a swarm back together after
// they diverged (a forward dropped at a full queue, an owner that missed
// writes while cut off), without waiting for the swarm's peers to
// announce again. Every repair_interval, at the same moment of the wall
// clock on every node, each node that has settled into its view:
//
//  1. sums its swarm digests by range, per member it shares swarms with
//     (antientropy_plan.go), once for all of them;
//  2. sends each such member its sums (DigestRequest); the member answers
//     with the ranges where its own sums, taken at the same moment,
//     differ;
//  3. lists its swarms in those ranges with their digests
//     (CompareRequest); the member answers with those it lacks or holds
//     differently;
//  4. sends it those swarms, each peer with its age (RepairRequest); the
//     member merges them, last announce winning (store.Merge).
//
// Each node only pushes its own copies; the other does the same in its
// own pass, so after both passes of an interval the copies agree. Peers
// keep their last-seen times, so a repair never extends a peer's life. A
// stop that one owner missed brings the peer back on the other until its
// lifetime ends, as the missed stop itself would have left it there.

const (
	// aeTimeout bounds each request of an exchange.
	aeTimeout = 10 * time.Second
	// aeParallel is how many members a node exchanges with at once.
	aeParallel = 4
	// aeRepairPeers is roughly how many peers one RepairRequest carries.
	aeRepairPeers = mergePeers
)

// errViewsDiffer is the answer of a member whose view places swarms
// otherwise: digests only compare when both agree on the owners.
var errViewsDiffer = errors.New("cluster: anti-entropy: views differ")

// aeState is a node's latest digest sums, shared by its own pass and the
// requests of other members.
type aeState struct {
	mu   sync.Mutex
	view *ring.View
	tick time.Time // the start of the repair_interval they were taken in
	sums map[int]*rangeSums
}

// digestSums returns the sums per member for view v taken in this
// repair_interval, summing the store if the last sums are of an earlier
// one or another view. Every member's pass starts at the same moment, so
// within an interval the sums a node compares a request against were
// taken when the sender took its own.
func (c *Cluster) digestSums(v *ring.View) map[int]*rangeSums {
	c.ae.mu.Lock()
	defer c.ae.mu.Unlock()
	tick := c.clock.Now().Truncate(c.cfg.RepairInterval)
	if c.ae.view == v && c.ae.tick.Equal(tick) {
		return c.ae.sums
	}
	p := newDigestPlan(v)
	c.store.Digests(func(batch []store.SwarmDigest) bool {
		for i := range batch {
			p.add(&batch[i])
		}
		return true
	})
	c.ae.view, c.ae.tick, c.ae.sums = v, tick, p.peers
	return p.peers
}

// antiEntropyLoop runs a pass at every multiple of repair_interval of the
// clock, so that all nodes take their digests at nearly the same moment,
// until the cluster stops.
func (c *Cluster) antiEntropyLoop() {
	defer c.wg.Done()
	every := c.cfg.RepairInterval
	for {
		now := c.clock.Now()
		t := time.NewTimer(now.Truncate(every).Add(every).Sub(now))
		select {
		case <-c.stop:
			t.Stop()
			return
		case <-t.C:
		}
		c.antiEntropyPass()
	}
}

// antiEntropyPass compares this node's copies with every member it shares
// swarms with and repairs theirs where they differ. It does nothing while
// the node's handoff is unsettled or its copies are not whole: those
// passes move swarms, and a copy still waiting for its handoff would look
// like a divergence.
func (c *Cluster) antiEntropyPass() {
	v := c.view.Load()
	if v.Self < 0 || len(v.Members()) < 2 || c.settled.Load() != v || !c.Trusted() {
		return
	}
	start := c.clock.Now()
	sums := c.digestSums(v)
	peers := make([]int, 0, len(sums))
	for p := range sums {
		peers = append(peers, p)
	}
	slices.Sort(peers)
	fp := viewFingerprint(v)

	// Round one with every member: which ranges differ.
	differ := make(map[int][]uint16, len(peers))
	var mu sync.Mutex
	c.forEachPeer(peers, func(p int) {
		ranges, err := c.digestRound(v, fp, p, sums[p])
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, errViewsDiffer):
			c.m.ae.exchanges[aeViewsDiffer].Inc()
		case err != nil:
			c.m.ae.exchanges[aeFailed].Inc()
			c.aeWarn("anti-entropy digest exchange failed", v, p, err)
		case len(ranges) == 0:
			c.m.ae.exchanges[aeInSync].Inc()
		default:
			differ[p] = ranges
		}
	})
	if len(differ) == 0 {
		c.m.ae.passTime.Observe(c.clock.Now().Sub(start).Seconds())
		return
	}

	// The swarms in differing ranges, per member, in one more pass over
	// the store; then rounds two and three.
	listed := c.listDiffering(v, differ)
	var sentSwarms, sentPeers int
	c.forEachPeer(peers, func(p int) {
		if differ[p] == nil {
			return
		}
		swarms, npeers, err := c.repairRound(v, fp, p, listed[p])
		mu.Lock()
		defer mu.Unlock()
		sentSwarms += swarms
		sentPeers += npeers
		switch {
		case errors.Is(err, errViewsDiffer):
			c.m.ae.exchanges[aeViewsDiffer].Inc()
		case err != nil:
			c.m.ae.exchanges[aeFailed].Inc()
			c.aeWarn("anti-entropy repair failed", v, p, err)
		case swarms == 0:
			c.m.ae.exchanges[aeInSync].Inc()
		default:
			c.m.ae.exchanges[aeRepaired].Inc()
		}
	})
	took := c.clock.Now().Sub(start)
	c.m.ae.passTime.Observe(took.Seconds())
	if sentSwarms > 0 {
		c.log.Info("anti-entropy repaired other owners' copies", zap.Uint64("epoch", v.Epoch), zap.Int("members_differing", len(differ)),
			zap.Int("swarms_sent", sentSwarms), zap.Int("peers_sent", sentPeers), zap.Duration("took", took))
	}
}

// forEachPeer runs fn for each of peers, aeParallel at a time, and waits.
func (c *Cluster) forEachPeer(peers []int, fn func(p int)) {
	sem := make(chan struct{}, aeParallel)
	var wg sync.WaitGroup
	for _, p := range peers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(p)
		})
	}
	wg.Wait()
}

func (c *Cluster) aeWarn(msg string, v *ring.View, p int, err error) {
	if n, ok := c.handoffLog.Allow(); ok {
		c.log.Warn(msg, zap.String("peer", v.Members()[p].Name), zap.Uint64("events", n), zap.Error(err))
	}
}

// aeCall sends req to member p with aeTimeout, cut short if p leaves the
// view or the cluster stops.
func (c *Cluster) aeCall(v *ring.View, p int, req transport.Request) (transport.Reply, error) {
	addr := v.DataAddrs[p]
	ctx, cancel := context.WithTimeout(c.ctx, aeTimeout)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		c.cancelWhenGone(ctx, cancel, addr)
	}()
	rep, err := c.tr.Call(ctx, addr, req)
	cancel()
	<-watched
	if re, ok := errors.AsType[transport.RemoteError](err); ok && string(re) == errViewsDiffer.Error() {
		return nil, errViewsDiffer
	}
	return rep, err
}

// digestRound sends member p this node's sums for it and returns the
// ranges p finds different.
func (c *Cluster) digestRound(v *ring.View, fp uint64, p int, mine *rangeSums) ([]uint16, error) {
	rep, err := c.aeCall(v, p, &transport.DigestRequest{From: v.Members()[v.Self].Name, View: fp, Digests: mine.sum[:]})
	if err != nil {
		return nil, err
	}
	r, ok := rep.(*transport.DigestReply)
	if !ok {
		return nil, fmt.Errorf("cluster: digest request answered with %T", rep)
	}
	c.m.ae.ranges.Add(float64(len(r.Ranges)))
	return r.Ranges, nil
}

// listDiffering returns, for each member in differ, this node's swarms in
// the ranges that differ with it that it owns together with it, with their
// digests.
func (c *Cluster) listDiffering(v *ring.View, differ map[int][]uint16) map[int][]transport.SwarmDigest {
	inRange := make(map[int]*[transport.DigestRanges]bool, len(differ))
	for p, ranges := range differ {
		var set [transport.DigestRanges]bool
		for _, r := range ranges {
			set[r] = true
		}
		inRange[p] = &set
	}
	all := ownsAll(v)
	out := make(map[int][]transport.SwarmDigest, len(differ))
	var owners []int
	c.store.Digests(func(batch []store.SwarmDigest) bool {
		for _, d := range batch {
			k := aeRange(&d.InfoHash)
			owners = coOwners(v, all, &d.InfoHash, owners[:0])
			for _, o := range owners {
				if set := inRange[o]; set != nil && set[k] {
					out[o] = append(out[o], transport.SwarmDigest{InfoHash: d.InfoHash, Digest: d.Digest})
				}
			}
		}
		return true
	})
	return out
}

// repairRound asks member p which of listed it lacks or holds differently
// and sends it this node's copies of those. It returns the swarms and
// peers sent.
func (c *Cluster) repairRound(v *ring.View, fp uint64, p int, listed []transport.SwarmDigest) (swarms, peers int, err error) {
	self := v.Members()[v.Self].Name
	var push []bittorrent.InfoHash
	for len(listed) > 0 {
		batch := listed[:min(len(listed), transport.MaxCompareSwarms)]
		listed = listed[len(batch):]
		rep, err := c.aeCall(v, p, &transport.CompareRequest{From: self, View: fp, Swarms: batch})
		if err != nil {
			return 0, 0, err
		}
		r, ok := rep.(*transport.CompareReply)
		if !ok {
			return 0, 0, fmt.Errorf("cluster: compare request answered with %T", rep)
		}
		for _, i := range r.Want {
			if int(i) < len(batch) {
				push = append(push, batch[i].InfoHash)
			}
		}
	}
	var req transport.RepairRequest
	var inReq int
	flush := func() error {
		if len(req.Swarms) == 0 {
			return nil
		}
		_, err := c.aeCall(v, p, &req)
		if err == nil {
			c.m.ae.swarms[aeSent].Add(float64(len(req.Swarms)))
		}
		req, inReq = transport.RepairRequest{}, 0
		return err
	}
	var seen []store.SeenPeer
	for _, ih := range push {
		var snatches uint32
		var ok bool
		seen, snatches, ok = c.store.SeenSwarm(ih, seen[:0])
		if !ok {
			continue // collected meanwhile
		}
		now := c.clock.Now()
		aged := make([]transport.AgedPeer, len(seen))
		for i := range seen {
			aged[i] = transport.AgedPeer{SwarmPeer: transport.SwarmPeer{Peer: seen[i].Peer, Seeder: seen[i].Seeder}, Age: ageSeconds(now, seen[i].Seen)}
		}
		// A swarm larger than one request goes in parts, each carrying
		// the snatch count: merging is idempotent.
		for first := true; first || len(aged) > 0; first = false {
			part := aged[:min(len(aged), aeRepairPeers)]
			aged = aged[len(part):]
			req.Swarms = append(req.Swarms, transport.RepairSwarm{InfoHash: ih, Snatches: snatches, Peers: part})
			inReq += len(part) + 1
			if inReq >= aeRepairPeers {
				if err := flush(); err != nil {
					return swarms, peers, err
				}
			}
		}
		swarms++
		peers += len(seen)
	}
	return swarms, peers, flush()
}

// ageSeconds is how long before now seen was, in whole seconds.
func ageSeconds(now, seen time.Time) uint32 {
	return uint32(min(max(now.Sub(seen), 0)/time.Second, 1<<32-1))
}

// handleAntiEntropy answers another member's anti-entropy requests.
func (c *Cluster) handleAntiEntropy(req transport.Request) (transport.Reply, error) {
	v := c.view.Load()
	switch r := req.(type) {
	case *transport.DigestRequest:
		p, err := c.aeCheck(v, r.From, r.View)
		if err != nil {
			return nil, err
		}
		if len(r.Digests) != transport.DigestRanges {
			return nil, fmt.Errorf("cluster: %d digests; want %d", len(r.Digests), transport.DigestRanges)
		}
		mine := c.digestSums(v)[p]
		if mine == nil {
			mine = &rangeSums{}
		}
		return &transport.DigestReply{Ranges: differingRanges(mine, r.Digests)}, nil
	case *transport.CompareRequest:
		if _, err := c.aeCheck(v, r.From, r.View); err != nil {
			return nil, err
		}
		return &transport.CompareReply{Want: wanted(r.Swarms, c.store.Digest)}, nil
	case *transport.RepairRequest:
		if v.Self < 0 {
			return nil, errors.New("cluster: leaving; not taking repairs")
		}
		now := c.clock.Now()
		var seen []store.SeenPeer
		for _, sw := range r.Swarms {
			seen = seen[:0]
			for _, p := range sw.Peers {
				seen = append(seen, store.SeenPeer{Peer: p.Peer, Seeder: p.Seeder, Seen: now.Add(-time.Duration(p.Age) * time.Second)})
			}
			c.m.ae.peersAdded.Add(float64(c.store.Merge(sw.InfoHash, seen, sw.Snatches)))
		}
		c.m.ae.swarms[aeReceived].Add(float64(len(r.Swarms)))
		c.checkOwned(len(r.Swarms), func(i int) bittorrent.InfoHash { return r.Swarms[i].InfoHash })
		return &transport.Ack{}, nil
	}
	return nil, fmt.Errorf("cluster: unknown request %T", req)
}

// aeCheck admits a digest or compare request from member from, sent with
// view fingerprint fp: both must place swarms the same way, and this node
// must have settled into its view. It returns the sender's index.
func (c *Cluster) aeCheck(v *ring.View, from string, fp uint64) (int, error) {
	if fp != viewFingerprint(v) {
		return -1, errViewsDiffer
	}
	p := v.Index(from)
	switch {
	case p < 0 || p == v.Self || v.Self < 0:
		return -1, fmt.Errorf("cluster: anti-entropy from %q, not another member", from)
	case c.settled.Load() != v || !c.Trusted():
		return -1, errors.New("cluster: anti-entropy: copies not settled yet")
	}
	return p, nil
}

// Exchange outcomes, swarm directions: the labels of aeMetrics.
const (
	aeInSync = iota
	aeRepaired
	aeViewsDiffer
	aeFailed
	aeSent     = 0
	aeReceived = 1
)

// aeMetrics count anti-entropy's work and what it repaired.
type aeMetrics struct {
	exchangeVec *prometheus.CounterVec
	exchanges   [4]prometheus.Counter // by outcome
	ranges      prometheus.Counter
	swarmVec    *prometheus.CounterVec
	swarms      [2]prometheus.Counter // by direction
	peersAdded  prometheus.Counter
	passTime    prometheus.Histogram
}

func newAEMetrics(ns, sub string) aeMetrics {
	m := aeMetrics{
		exchangeVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "antientropy_exchanges_total",
			Help: "Anti-entropy exchanges with another owner, by result: in_sync, repaired (this node sent it swarms), views_differ, failed.",
		}, []string{"result"}),
		ranges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "antientropy_differing_ranges_total",
			Help: "Ranges of infohashes whose digests differed from another owner's.",
		}),
		swarmVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "antientropy_swarms_total",
			Help: "Swarms sent to or received from another owner whose copy differed, by direction (sent, received).",
		}, []string{"direction"}),
		peersAdded: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "antientropy_peers_added_total",
			Help: "Peers this node lacked and took from another owner's copy.",
		}),
		passTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "antientropy_pass_seconds",
			Help:    "Duration of one anti-entropy pass over every member this node shares swarms with.",
			Buckets: prometheus.ExponentialBuckets(.001, 4, 10),
		}),
	}
	for i, l := range []string{"in_sync", "repaired", "views_differ", "failed"} {
		m.exchanges[i] = m.exchangeVec.WithLabelValues(l)
	}
	for i, l := range []string{"sent", "received"} {
		m.swarms[i] = m.swarmVec.WithLabelValues(l)
	}
	return m
}

func (m *aeMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.exchangeVec, m.ranges, m.swarmVec, m.peersAdded, m.passTime}
}
