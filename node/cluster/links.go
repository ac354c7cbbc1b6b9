package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// Gossip says whether a member is alive; it does not say whether swarms
// reach it. Members that gossip but cannot exchange data (certificates
// from another CA, a firewalled data port, connections refused by address)
// each answer with their own part of every swarm while membership looks
// whole: a silent split. So the data plane judges each member's data
// channel by what happens on it: the outcome of every call this node makes
// to the member (forwards, reads, handoffs, full scrapes, and probes when
// nothing else is sent), and the connections from the member that this
// node's data channel refused.
const (
	// linkFailAfter is how many calls in a row must fail before a link
	// counts as failing, so that one lost connection (a restart, a cut
	// that heals) does not flap the status.
	linkFailAfter = 3
	// linkProbeIdle is how long a link may go without a call before a
	// probe checks it; linkProbeFailing is how often a failing link is
	// probed, so its recovery shows within about a second.
	linkProbeIdle    = 5 * time.Second
	linkProbeFailing = time.Second
	// linkProbeTimeout bounds one probe.
	linkProbeTimeout = 2 * time.Second
	// linkRefusedFor is how long a connection from the member that this
	// node refused marks the link failing. A refused member retries within
	// linkProbeFailing, so a refusal that persists stays fresh.
	linkRefusedFor = 15 * time.Second
	// linkMinBudget: a call given less time than this that runs out of it
	// says nothing about the link. Reads wait read_timeout (25 ms) and
	// give up on a busy owner that is perfectly reachable.
	linkMinBudget = time.Second
)

// LinkState is what this node knows of a member's data channel.
type LinkState string

// The states of a link.
const (
	// LinkUnknown: no call has finished yet (a member that just joined).
	LinkUnknown LinkState = "unknown"
	// LinkOK: the last call was answered, or too few have failed since.
	LinkOK LinkState = "ok"
	// LinkFailing: linkFailAfter calls in a row failed, or this node
	// refused a connection from the member within linkRefusedFor.
	LinkFailing LinkState = "failing"
)

// link is what this node saw of one member's data channel.
type link struct {
	lastOK, lastFail time.Time
	streak           int    // calls failed since the last that was answered
	err              string // why the last call failed
	refused          time.Time
	refusal          string // why this node refused the member's connection
	probing          bool
	reported         LinkState // the state last logged
}

// state is the rule, a pure function of what was seen and the time.
func (l *link) state(now time.Time) LinkState {
	switch {
	case l.streak >= linkFailAfter:
		return LinkFailing
	case !l.refused.IsZero() && now.Sub(l.refused) < linkRefusedFor:
		return LinkFailing
	case l.lastOK.IsZero():
		return LinkUnknown
	}
	return LinkOK
}

// reason says why a failing link fails.
func (l *link) reason(now time.Time) string {
	if l.streak >= linkFailAfter || l.refused.IsZero() || now.Sub(l.refused) >= linkRefusedFor {
		return "calls fail: " + l.err
	}
	return "its connections are refused: " + l.refusal
}

// probeDue reports whether the link should be probed now: nothing is in
// flight and no call has finished for linkProbeIdle, or for
// linkProbeFailing while it fails or has just failed.
func (l *link) probeDue(now time.Time) bool {
	if l.probing {
		return false
	}
	last := l.lastOK
	if l.lastFail.After(last) {
		last = l.lastFail
	}
	if last.IsZero() {
		return true
	}
	every := linkProbeIdle
	if l.streak > 0 || l.state(now) == LinkFailing {
		every = linkProbeFailing
	}
	return now.Sub(last) >= every
}

// linkOutcome classifies a call's result for its link: whether it
// failed, and whether it says anything about the link at all. A call the
// member answered, even with an error, shows the link works. One its
// caller abandoned, or that had less than linkMinBudget and used it up,
// says nothing, and neither does a request too large to send.
func linkOutcome(err, ctxErr error, budget time.Duration) (failed, counts bool) {
	switch {
	case err == nil:
		return false, true
	case errors.Is(err, transport.ErrFrameTooLarge):
		return false, false
	case !errors.Is(err, transport.ErrUnreachable):
		return false, true
	case errors.Is(ctxErr, context.Canceled):
		return false, false
	case errors.Is(ctxErr, context.DeadlineExceeded) && budget >= 0 && budget < linkMinBudget:
		return false, false
	}
	return true, true
}

// links holds every member's link, by data address. Safe for concurrent
// use.
type links struct {
	mu sync.Mutex
	by map[string]*link
}

func (ls *links) get(addr string) *link {
	l := ls.by[addr]
	if l == nil {
		if ls.by == nil {
			ls.by = map[string]*link{}
		}
		l = &link{reported: LinkUnknown}
		ls.by[addr] = l
	}
	return l
}

// called records the outcome of a call to addr.
func (ls *links) called(addr string, err error, now time.Time) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.get(addr)
	if err == nil {
		l.lastOK, l.streak = now, 0
		return
	}
	l.lastFail, l.err = now, err.Error()
	l.streak++
}

// refused records that this node refused a connection from the member
// whose data channel is at addr.
func (ls *links) refused(addr, reason string, now time.Time) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.get(addr)
	l.refused, l.refusal = now, reason
}

// snapshot returns a copy of addr's link.
func (ls *links) snapshot(addr string) link {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if l := ls.by[addr]; l != nil {
		return *l
	}
	return link{reported: LinkUnknown}
}

// watchedTransport records the outcome of every call in links.
type watchedTransport struct {
	transport.Transport
	links *links
	clock Clock
}

func (w watchedTransport) Call(ctx context.Context, addr string, req transport.Request) (transport.Reply, error) {
	budget := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		budget = time.Until(dl)
	}
	rep, err := w.Transport.Call(ctx, addr, req)
	if failed, counts := linkOutcome(err, ctx.Err(), budget); counts {
		var linkErr error // nil: the member answered, if only with an error
		if failed {
			linkErr = err
		}
		w.links.called(addr, linkErr, w.clock.Now())
	}
	return rep, err
}

// probeLoop probes the links that have been quiet, or are failing, and
// logs each link that starts or stops failing.
func (c *Cluster) probeLoop() {
	defer c.wg.Done()
	tick := time.NewTicker(linkProbeFailing)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		c.checkLinks(c.view.Load(), c.clock.Now())
	}
}

// checkLinks forgets the links of nodes no longer in v, starts the probes
// that are due, and logs changes of state.
func (c *Cluster) checkLinks(v *ring.View, now time.Time) {
	c.links.mu.Lock()
	defer c.links.mu.Unlock()
	live := make(map[string]bool, len(v.DataAddrs))
	for i, addr := range v.DataAddrs {
		if i == v.Self {
			continue
		}
		live[addr] = true
		l := c.links.get(addr)
		name := v.Members()[i].Name
		switch st := l.state(now); {
		case st == l.reported:
		case st == LinkFailing:
			c.log.Warn("data channel to member failing: swarm writes and reads between the two do not get through",
				zap.String("peer", name), zap.String("addr", addr), zap.String("reason", l.reason(now)))
		case l.reported == LinkFailing:
			c.log.Info("data channel to member working again", zap.String("peer", name), zap.String("addr", addr))
		}
		l.reported = l.state(now)
		if l.probeDue(now) {
			l.probing = true
			if !c.goOwned(func() { c.probe(addr) }) {
				l.probing = false
			}
		}
	}
	for addr := range c.links.by {
		if !live[addr] {
			delete(c.links.by, addr)
		}
	}
}

// probe makes one call to addr that asks for nothing: an empty fetch,
// which every version of the data channel answers.
func (c *Cluster) probe(addr string) {
	ctx, cancel := context.WithTimeout(c.ctx, linkProbeTimeout)
	defer cancel()
	_, _ = c.tr.Call(ctx, addr, &transport.FetchManyRequest{MaxPeers: 1})
	c.links.mu.Lock()
	if l := c.links.by[addr]; l != nil {
		l.probing = false
	}
	c.links.mu.Unlock()
}

// RefusedFrom tells the data plane that this node's data channel refused
// a connection from the member whose data channel is at addr, for reason:
// the link is failing in that direction even while this node's own calls
// get through.
func (c *Cluster) RefusedFrom(addr, reason string) {
	c.links.refused(addr, reason, c.clock.Now())
}

// FailingLinks lists the members whose data channel is failing, with
// Link and LinkError set: Status's verdicts without its share estimate.
func (c *Cluster) FailingLinks() []MemberStatus {
	v, now := c.view.Load(), c.clock.Now()
	var out []MemberStatus
	for i, m := range v.Members() {
		if st, why := c.linkStatus(v, i, now); st == LinkFailing {
			out = append(out, MemberStatus{Name: m.Name, Datacenter: m.Datacenter, Zone: m.Zone, Data: v.DataAddrs[i], Link: st, LinkError: why})
		}
	}
	return out
}

// linkStatus is member i of v's link as /cluster shows it: its state and,
// when failing, why.
func (c *Cluster) linkStatus(v *ring.View, i int, now time.Time) (LinkState, string) {
	if i == v.Self {
		return "", ""
	}
	l := c.links.snapshot(v.DataAddrs[i])
	st := l.state(now)
	if st != LinkFailing {
		return st, ""
	}
	return st, l.reason(now)
}

// linkUp is the gauge of each member's link, by member name.
var linkUp = prometheus.NewDesc("karuta_cluster_data_link_up",
	"1 while the data channel to a member works (or has not been tried yet), 0 while it fails: calls to it fail, or its connections are refused. By member.",
	[]string{"peer"}, nil)

// linkCollector reports every other member's link at scrape time, so
// members that come and go need no gauge bookkeeping.
type linkCollector struct{ c *Cluster }

func (l linkCollector) Describe(ch chan<- *prometheus.Desc) { ch <- linkUp }

func (l linkCollector) Collect(ch chan<- prometheus.Metric) {
	v, now := l.c.view.Load(), l.c.clock.Now()
	for i, m := range v.Members() {
		if i == v.Self {
			continue
		}
		up := 1.0
		if st, _ := l.c.linkStatus(v, i, now); st == LinkFailing {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(linkUp, prometheus.GaugeValue, up, m.Name)
	}
}
