package store

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus series, under karuta_store_.
type metrics struct {
	gcRemovedPeers  prometheus.Counter
	gcRemovedSwarms prometheus.Counter
	gcDuration      prometheus.Histogram
	ignoredAddr     prometheus.Counter
	ignoredOp       prometheus.Counter
}

func newMetrics(m *Memory, reg prometheus.Registerer) (*metrics, error) {
	ignored := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "karuta",
		Subsystem: "store",
		Name:      "ignored_changes_total",
		Help:      "Changes not applied because they were malformed, by reason.",
	}, []string{"reason"})
	mt := &metrics{
		gcRemovedPeers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "store",
			Name:      "gc_removed_peers_total",
			Help:      "Peers removed by garbage collection because they stopped announcing.",
		}),
		gcRemovedSwarms: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "store",
			Name:      "gc_removed_swarms_total",
			Help:      "Swarms removed by garbage collection because they had no peers left.",
		}),
		gcDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "karuta",
			Subsystem: "store",
			Name:      "gc_duration_seconds",
			Help:      "Time one garbage collection over the whole store took.",
			Buckets:   prometheus.ExponentialBuckets(1e-4, 4, 10), // 100µs to ~26s
		}),
		ignoredAddr: ignored.WithLabelValues("invalid_address"),
		ignoredOp:   ignored.WithLabelValues("unknown_op"),
	}
	if reg == nil {
		return mt, nil
	}
	for _, c := range []prometheus.Collector{
		mt.gcRemovedPeers, mt.gcRemovedSwarms, mt.gcDuration, ignored, newSizeCollector(m),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return mt, nil
}

// sizeCollector reports the store's size from the totals it maintains, so
// a scrape costs a pass over the shards, never over the swarms.
type sizeCollector struct {
	m      *Memory
	swarms *prometheus.Desc
	peers  *prometheus.Desc
}

func newSizeCollector(m *Memory) *sizeCollector {
	return &sizeCollector{
		m: m,
		swarms: prometheus.NewDesc("karuta_store_swarms",
			"Swarms held, including those emptied since the last garbage collection.", nil, nil),
		peers: prometheus.NewDesc("karuta_store_peers",
			"Peers held, by address family (ipv4, ipv6, webrtc) and kind (seeder, leecher).",
			[]string{"family", "kind"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *sizeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.swarms
	ch <- c.peers
}

// Collect implements prometheus.Collector.
func (c *sizeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Stats()
	ch <- prometheus.MustNewConstMetric(c.swarms, prometheus.GaugeValue, float64(st.Swarms))
	for _, p := range []struct {
		family, kind string
		n            int
	}{
		{"ipv4", "seeder", st.Seeders4},
		{"ipv4", "leecher", st.Leechers4},
		{"ipv6", "seeder", st.Seeders6},
		{"ipv6", "leecher", st.Leechers6},
		{"webrtc", "seeder", st.SeedersRTC},
		{"webrtc", "leecher", st.LeechersRTC},
	} {
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(p.n), p.family, p.kind)
	}
}
