package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the data plane's counters. Forward results: ok (delivered),
// queue_full, unreachable (retried for forward_retry, then dropped),
// rejected (the owner answered with an error) and no_owner (no member to
// send to, as during a node's own leave).
type metrics struct {
	forwarded   *prometheus.CounterVec
	forwardTime prometheus.Histogram
	received    prometheus.Counter
	duplicates  prometheus.Counter
	reads       *prometheus.CounterVec
	// readLocal … readFailed are reads' children, looked up once: a read
	// is on every request's path.
	readLocal, readCached, readFetched, readStale, readFailed prometheus.Counter
	fetchTime                                                 prometheus.Histogram
	prefetches                                                prometheus.Counter
	fetchesDropped                                            *prometheus.CounterVec
	handoff                                                   *prometheus.CounterVec
	handoffTime                                               prometheus.Histogram
	handoffFails                                              prometheus.Counter
	queueDepth                                                *prometheus.Desc
	ae                                                        aeMetrics
	cacheSwarms, cachePeers                                   *prometheus.Desc
}

func newMetrics() *metrics {
	m := newMetricVecs()
	m.readLocal, m.readCached = m.reads.WithLabelValues("local"), m.reads.WithLabelValues("cached")
	m.readFetched, m.readStale = m.reads.WithLabelValues("fetched"), m.reads.WithLabelValues("stale")
	m.readFailed = m.reads.WithLabelValues("failed")
	// Every result and direction exists at zero from the start, so rate()
	// and increase() see the first drop.
	for _, r := range []string{"ok", "queue_full", "unreachable", "rejected", "no_owner"} {
		m.forwarded.WithLabelValues(r)
	}
	for _, d := range []string{"sent", "received", "dropped"} {
		m.handoff.WithLabelValues(d)
	}
	for _, r := range []string{"queue_full", "expired"} {
		m.fetchesDropped.WithLabelValues(r)
	}
	return m
}

func newMetricVecs() *metrics {
	const ns, sub = "karuta", "cluster"
	latency := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}
	return &metrics{
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "forwarded_changes_total",
			Help: "Swarm changes forwarded to their owners, by result: ok, queue_full, unreachable, rejected, no_owner.",
		}, []string{"result"}),
		forwardTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "forward_batch_seconds",
			Help: "Round trip of one forwarded batch, delivered or not.", Buckets: latency,
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "received_changes_total",
			Help: "Swarm changes applied on behalf of other nodes.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "duplicate_changes_total",
			Help: "Forwarded swarm changes received again after a retry and skipped, having been applied already.",
		}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "reads_total",
			Help: "Swarm reads by source: local (this node owns it), cached, fetched (from an owner), stale (no owner answered; an older copy served) and failed (no owner answered; local data served).",
		}, []string{"result"}),
		prefetches: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "prefetches_total",
			Help: "Swarm fetches started ahead of their reads, for a batch of requests received together.",
		}),
		fetchesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "fetches_dropped_total",
			Help: "Fetches of swarms from other members dropped before they were sent, by reason: queue_full (the member's queue was full), expired (the reader had stopped waiting); the read goes to the next owner or answers with what it has.",
		}, []string{"reason"}),
		fetchTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "fetch_seconds",
			Help: "Time to fetch a swarm from its owners for a read, answered or not.", Buckets: latency,
		}),
		handoff: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "handoff_swarms_total",
			Help: "Swarms streamed between nodes on membership changes, by direction (sent, received, dropped after handing over).",
		}, []string{"direction"}),
		handoffTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "handoff_pass_seconds",
			Help:    "Duration of one pass that moves swarms to their owners.",
			Buckets: prometheus.ExponentialBuckets(.001, 4, 10),
		}),
		handoffFails: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "handoff_failures_total",
			Help: "Handoff requests that failed and will be retried.",
		}),
		queueDepth: prometheus.NewDesc(ns+"_"+sub+"_forward_queue_depth",
			"Changes waiting to be forwarded, by destination node.", []string{"peer"}, nil),
		ae: newAEMetrics(ns, sub),
		cacheSwarms: prometheus.NewDesc(ns+"_"+sub+"_read_cache_swarms",
			"Swarms this node holds a copy of in its read cache, fresh or kept as a fallback.", nil, nil),
		cachePeers: prometheus.NewDesc(ns+"_"+sub+"_read_cache_peers",
			"Peers held in the read cache's copies of swarms owned elsewhere, fresh or kept as a fallback.", nil, nil),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{m.forwarded, m.forwardTime, m.received, m.duplicates, m.reads, m.prefetches, m.fetchesDropped, m.fetchTime, m.handoff, m.handoffTime, m.handoffFails}, m.ae.collectors()...)
}

// queueCollector reports each destination's queue depth at scrape time,
// so destinations that come and go need no gauge bookkeeping.
type queueCollector struct{ c *Cluster }

func (q queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- q.c.m.queueDepth }

func (q queueCollector) Collect(ch chan<- prometheus.Metric) {
	for name, depth := range q.c.QueueDepths() {
		ch <- prometheus.MustNewConstMetric(q.c.m.queueDepth, prometheus.GaugeValue, float64(depth), name)
	}
}

// cacheCollector reports the read cache's size at scrape time, so the
// read path keeps no gauge up to date. A scrape walks the cache's entries
// under each shard's lock in turn.
type cacheCollector struct{ c *Cluster }

func (cc cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cc.c.m.cacheSwarms
	ch <- cc.c.m.cachePeers
}

func (cc cacheCollector) Collect(ch chan<- prometheus.Metric) {
	swarms, peers := cc.c.cache.held()
	ch <- prometheus.MustNewConstMetric(cc.c.m.cacheSwarms, prometheus.GaugeValue, float64(swarms))
	ch <- prometheus.MustNewConstMetric(cc.c.m.cachePeers, prometheus.GaugeValue, float64(peers))
}
