package cluster

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// goFetch runs fetch on a goroutine Close waits for; once Close has begun
// it fetches nothing and wakes the jobs' waiters at once.
// Jobs that ask one member at a time (the steady state) and jobs that
// merge every member's answer (a trust window) run as separate fetches,
// so neither kind waits for the other's deadline.
func (c *Cluster) goFetch(v *ring.View, jobs []fetchJob) {
	split := slices.IndexFunc(jobs, func(j fetchJob) bool { return j.merge != jobs[0].merge })
	if split > 0 {
		var single, merge []fetchJob
		for _, j := range jobs {
			if j.merge {
				merge = append(merge, j)
			} else {
				single = append(single, j)
			}
		}
		c.goFetch(v, single)
		c.goFetch(v, merge)
		return
	}
	if !c.goOwned(func() { c.fetch(v, jobs) }) {
		for _, j := range jobs {
			c.cache.finish(j.ih, j.e, nil)
		}
	}
}

// fetchJob is one swarm of a fetch: the members to ask (planRead's
// route), whether to merge their answers, whether this node owns the
// swarm, and the cache ticket to finish.
type fetchJob struct {
	ih      bittorrent.InfoHash
	targets []int
	// merge: ask every target at once and merge the answers; otherwise
	// ask targets in turn, hedging (see runSingle).
	merge bool
	// own: this node owns ih but its copy may lack part of the swarm (it
	// has just gained it), so its copy joins the answers.
	own bool
	e   *cacheEntry
}

// fetch asks the members in targets for the swarms of jobs, one request
// per member (per MaxFetchMany swarms), all in parallel under one
// deadline: first the members in this node's datacenter, then, for swarms
// none of those answered, the others. Owners can lag one another by a
// forward (the node that took an announce applies it at once and sends it
// to the other owners a moment later), and an owner that has just gained a
// swarm may not hold it yet, so a swarm's answers are merged. Once a
// member that held the swarm before the last membership change has
// answered for it with peers, the others get a short grace instead of the
// whole deadline, so one slow owner does not hold every read up; after an
// answer from any other member, they get half the read timeout.
func (c *Cluster) fetch(v *ring.View, jobs []fetchJob) {
	start := time.Now()
	defer func() { c.m.fetchTime.Observe(time.Since(start).Seconds()) }()
	// Fetches outlive the caller's wait, but not by much: a late answer is
	// still worth caching, a very late one is not.
	ctx, cancel := context.WithTimeout(c.ctx, 4*c.cfg.ReadTimeout)
	defer cancel()
	f := &fetchRound{
		c: c, v: v, jobs: jobs,
		merged: make([]*transport.FetchReply, len(jobs)),
		held:   make([]bool, len(jobs)),
		done:   make([]bool, len(jobs)),
	}
	if len(jobs) > 0 && !jobs[0].merge {
		f.runSingle(ctx)
	} else {
		dc := ""
		if v.Self >= 0 {
			dc = v.Members()[v.Self].Datacenter
		}
		near := func(o int) bool { return v.Self < 0 || v.Members()[o].Datacenter == dc }
		f.run(ctx, near)
		f.run(ctx, func(o int) bool { return !near(o) })
	}
	for i := range jobs {
		f.finish(i)
	}
}

// runSingle asks each job's first target, one request per member (per
// MaxFetchMany swarms), and finishes each job with the first answer for
// it. The jobs still unanswered when hedgeDelay has passed, or once every
// request out has come back, are asked of their next target, and so on
// until every job is answered, its targets are used up, or ctx ends. An
// answer that comes late still counts. One goroutine per request and one
// timer for the whole fetch, however many swarms it holds.
func (f *fetchRound) runSingle(ctx context.Context) {
	total := 0
	for _, j := range f.jobs {
		total += len(j.targets)
	}
	// Buffered for every request this fetch can make, so answers that
	// come after it ended never block.
	answers := make(chan memberAnswer, total)
	out, step, left := 0, 0, len(f.jobs)
	// send asks the next target of every job not answered; it returns
	// false if no job had one.
	send := func() bool {
		groups := map[int][]int{}
		for i, j := range f.jobs {
			if !f.done[i] && step < len(j.targets) {
				groups[j.targets[step]] = append(groups[j.targets[step]], i)
			}
		}
		step++
		for o, idx := range groups {
			for chunk := range slices.Chunk(idx, transport.MaxFetchMany) {
				out++
				if !f.c.goOwned(func() { answers <- memberAnswer{o, chunk, f.askMany(ctx, f.v.DataAddrs[o], chunk)} }) {
					answers <- memberAnswer{o: o, idx: chunk}
				}
			}
		}
		return len(groups) > 0
	}
	if !send() {
		return
	}
	hedge := time.NewTimer(hedgeDelay(f.c.cfg.ReadTimeout))
	defer hedge.Stop()
	for left > 0 {
		select {
		case a := <-answers:
			out--
			for k, i := range a.idx {
				if a.reps != nil && !f.done[i] {
					f.merged[i] = &a.reps[k]
					f.finish(i)
					left--
				}
			}
			if left > 0 && out == 0 && !send() {
				return // every target asked has answered or failed
			}
		case <-hedge.C:
			if send() {
				hedge.Reset(hedgeDelay(f.c.cfg.ReadTimeout))
			}
		case <-ctx.Done():
			return
		}
	}
}

// fetchRound is the state of one fetch: each job's merged answer, whether
// a member that held the swarm before the last membership change
// answered it, and whether its cache ticket is finished. It is owned by
// fetch's goroutine.
type fetchRound struct {
	c      *Cluster
	v      *ring.View
	jobs   []fetchJob
	merged []*transport.FetchReply
	held   []bool
	done   []bool
}

// memberAnswer is member o's answer to a request for jobs idx: one reply
// per job, or nil if it did not answer.
type memberAnswer struct {
	o    int
	idx  []int
	reps []transport.FetchReply
}

// run asks the members that pick selects for the jobs not finished yet,
// one request per member and MaxFetchMany jobs, and merges the answers as
// they come, until all are in, or ctx ends. A job whose members have all
// answered finishes at once; the others finish when a grace ends (see
// fetch).
func (f *fetchRound) run(ctx context.Context, pick func(o int) bool) {
	groups := map[int][]int{}
	for i, j := range f.jobs {
		if f.done[i] || f.merged[i] != nil {
			continue // answered by a nearer member
		}
		for _, o := range j.targets {
			if pick(o) {
				groups[o] = append(groups[o], i)
			}
		}
	}
	if len(groups) == 0 {
		return
	}
	type call struct {
		o   int
		idx []int
	}
	var calls []call
	pending := make([]int, len(f.jobs)) // requests still out per job
	for o, idx := range groups {
		for chunk := range slices.Chunk(idx, transport.MaxFetchMany) {
			for _, i := range chunk {
				pending[i]++
			}
			calls = append(calls, call{o, chunk})
		}
	}
	// Buffered for every answer, so callers left behind at the deadline
	// never block.
	answers := make(chan memberAnswer, len(calls))
	for _, cl := range calls {
		if !f.c.goOwned(func() { answers <- memberAnswer{cl.o, cl.idx, f.askMany(ctx, f.v.DataAddrs[cl.o], cl.idx)} }) {
			answers <- memberAnswer{o: cl.o, idx: cl.idx}
		}
	}
	// short follows an answer from a member that held the swarm before;
	// long any other, so one member that cannot be reached does not leave
	// the readers with nothing.
	var short, long <-chan time.Time
	// Count answers, not turns of the loop: a timer firing is no answer.
	for got := 0; got < len(calls); {
		select {
		case a := <-answers:
			got++
			for k, i := range a.idx {
				pending[i]--
				if a.reps != nil {
					f.merged[i] = mergeReplies(f.merged[i], &a.reps[k], f.c.cfg.ReadMaxPeers)
					if f.c.heldBefore(f.v, f.jobs[i].ih, a.o) {
						f.held[i] = true
					}
				}
				switch {
				case f.merged[i] == nil:
				case pending[i] == 0:
					f.finish(i)
				case size(f.merged[i].Counts) == 0:
					// An owner that has just gained the swarm may answer
					// first, with a part of it; wait for the others.
				case f.held[i]:
					if short == nil {
						short = time.After(min(f.c.cfg.ReadTimeout/5, 5*time.Millisecond))
					}
				case long == nil:
					long = time.After(f.c.cfg.ReadTimeout / 2)
				}
			}
		case <-short:
			for i := range f.jobs {
				if f.merged[i] != nil && f.held[i] {
					f.finish(i)
				}
			}
			short = nil
		case <-long:
			for i := range f.jobs {
				if f.merged[i] != nil {
					f.finish(i)
				}
			}
			long = nil
		case <-ctx.Done():
			return
		}
	}
}

// askMany fetches the swarms of jobs idx from the member at addr, one
// reply per job in order, or nil if it did not answer. The request is
// shared with the other fetches waiting for that member (fetchBatcher). A member that does
// not know FetchManyRequest (an older version, during a rolling upgrade)
// is asked one swarm at a time.
func (f *fetchRound) askMany(ctx context.Context, addr string, idx []int) []transport.FetchReply {
	req := &transport.FetchManyRequest{InfoHashes: make([]bittorrent.InfoHash, len(idx)), MaxPeers: f.c.cfg.ReadMaxPeers}
	for k, i := range idx {
		req.InfoHashes[k] = f.jobs[i].ih
	}
	reps, err := f.c.batcherFor(addr).fetch(ctx, req.InfoHashes)
	if err == nil {
		return reps
	}
	if !errors.As(err, new(transport.RemoteError)) {
		return nil
	}
	out := make([]transport.FetchReply, len(idx))
	for k, ih := range req.InfoHashes {
		fr := f.c.fetchOld(ctx, addr, ih)
		if fr == nil {
			return nil
		}
		out[k] = *fr
	}
	return out
}

// finish records job i's answer in the cache, once, and wakes its readers.
func (f *fetchRound) finish(i int) {
	if f.done[i] {
		return
	}
	f.done[i] = true
	j := &f.jobs[i]
	best := f.merged[i]
	if best != nil && j.own {
		// An owner asks others only while its own copy may lack part of
		// the swarm; what it holds (the writes forwarded to it since it
		// gained the swarm) belongs in the answer too.
		best = mergeReplies(best, f.c.localReply(j.ih, f.c.cfg.ReadMaxPeers), f.c.cfg.ReadMaxPeers)
	}
	f.c.cache.finish(j.ih, j.e, f.c.snapshotOf(best))
}

// snapshotOf is the copy a fetch's answer makes, or nil without one.
func (c *Cluster) snapshotOf(best *transport.FetchReply) *snapshot {
	if best == nil {
		return nil
	}
	at := c.clock.Now()
	if size(best.Counts) == 0 {
		// An empty swarm is most often one whose first announce is
		// still on its way to the owners; keep the answer briefly so
		// the peer shows up soon after it lands.
		at = at.Add(-c.cfg.ReadCacheTTL + min(c.cfg.ReadCacheTTL, emptyTTL))
	}
	return newSnapshot(best, at)
}

// fetchDirect is the steady state's fetch of one swarm for a read that
// was not prefetched (an HTTP announce, a UDP one its batch did not
// cover), on the caller's goroutine: it asks the first of targets
// through its member's batcher, the next once hedgeDelay has passed
// without an answer or at once if the one asked failed, and takes the
// first answer from any of them, until the fetch is read_timeout old. It
// finishes the ticket e. No goroutine, context or channel per member
// asked; one timer.
func (c *Cluster) fetchDirect(v *ring.View, ih bittorrent.InfoHash, targets []int, e *cacheEntry) {
	start := time.Now()
	defer func() { c.m.fetchTime.Observe(time.Since(start).Seconds()) }()
	ihs := []bittorrent.InfoHash{ih}
	deadline := e.fl.started.Add(c.cfg.ReadTimeout)
	notify := make(chan *batchedFetch, len(targets))
	asked := make([]*batchedFetch, 0, len(targets))
	next, out := 0, 0
	ask := func() {
		if next < len(targets) {
			asked = append(asked, c.batcherFor(v.DataAddrs[targets[next]]).start(ihs, deadline, notify))
			next++
			out++
		}
	}
	ask()
	left := func() time.Duration { return deadline.Sub(c.clock.Now()) }
	wait := func() time.Duration {
		if next < len(targets) {
			return min(hedgeDelay(c.cfg.ReadTimeout), left())
		}
		return left()
	}
	timer := time.NewTimer(wait())
	defer timer.Stop()
	var best *transport.FetchReply
	for out > 0 && best == nil {
		select {
		case bf := <-notify:
			out--
			switch {
			case bf.err == nil:
				best = &bf.reps[0]
			case errors.As(bf.err, new(transport.RemoteError)):
				// A member that does not know FetchManyRequest (an older
				// version, during a rolling upgrade): ask it alone.
				ctx, cancel := context.WithTimeout(c.ctx, left())
				best = c.fetchOld(ctx, v.DataAddrs[targets[slices.Index(asked, bf)]], ih)
				cancel()
			}
			if best == nil && out == 0 {
				ask() // failed: the next at once
				timer.Reset(wait())
			}
		case <-timer.C:
			if next == len(targets) || left() <= 0 {
				out = 0 // read_timeout: give up
				break
			}
			ask()
			timer.Reset(wait())
		}
	}
	c.cache.finish(ih, e, c.snapshotOf(best))
}

// fetchOld asks the member at addr for ih alone with a FetchRequest, as a
// member without FetchManyRequest (an older version) wants, or returns
// nil.
func (c *Cluster) fetchOld(ctx context.Context, addr string, ih bittorrent.InfoHash) *transport.FetchReply {
	reply, err := c.tr.Call(ctx, addr, &transport.FetchRequest{InfoHash: ih, MaxPeers: c.cfg.ReadMaxPeers})
	if fr, ok := reply.(*transport.FetchReply); ok && err == nil {
		return fr
	}
	return nil
}
