package loadgen

import (
	"fmt"
	"slices"
	"strings"
)

// faultRule picks the series of one metric whose increase means a
// request or change was lost, refused or served from less than the whole
// swarm. A run in which any of them grew is invalid, however fast it was.
type faultRule struct {
	metric string
	// label and values select series: those whose label is one of values
	// (bad), or with except, those whose label is none of them. An empty
	// label selects every series of the metric.
	label  string
	values []string
	except bool
	why    string
}

// faultRules are the counters Karuta keeps of what it drops. Counters
// added later whose names say they count drops or refusals are caught by
// faultName; these are the ones whose names do not say so, or whose
// labels mix faults with success.
var faultRules = []faultRule{
	{metric: "karuta_cluster_forwarded_changes_total", label: "result", values: []string{"ok"}, except: true,
		why: "changes not delivered to an owner (queue_full, unreachable, rejected, no_owner)"},
	{metric: "karuta_cluster_reads_total", label: "result", values: []string{"failed", "stale"},
		why: "reads no owner answered: served from an old copy (stale) or local data only (failed)"},
	{metric: "karuta_frontend_requests_total", label: "result", values: []string{"error"},
		why: "requests the tracker failed to answer (internal errors)"},
	{metric: "karuta_store_ignored_changes_total", why: "changes the store could not apply"},
	{metric: "karuta_cluster_handoff_failures_total", why: "handoff requests that failed (a steady cluster has none)"},
}

// faultWords mark a karuta counter as a count of drops or refusals by its
// name alone: karuta_hooks_post_dropped_total,
// karuta_frontend_dropped_total, karuta_cluster_data_rejected_total,
// karuta_frontend_connections_refused_total and whatever is added later
// under such a name.
var faultWords = []string{"dropped", "rejected", "refused", "lost", "failed", "failures", "timeouts", "errors"}

// isFault reports whether series s counts faults.
func isFault(s series) bool {
	for _, r := range faultRules {
		if s.name != r.metric {
			continue
		}
		if r.label == "" {
			return true
		}
		return slices.Contains(r.values, s.label(r.label)) != r.except
	}
	return faultName(s.name)
}

// faultName reports whether a counter's name says it counts faults.
func faultName(name string) bool {
	if !strings.HasPrefix(name, "karuta_") || !strings.HasSuffix(name, "_total") {
		return false
	}
	for _, w := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(name, "karuta_"), "_total"), "_") {
		if slices.Contains(faultWords, w) {
			return true
		}
	}
	return false
}

// faultDeltas returns how much each fault series grew from before to
// after, the ones that grew only. A series missing before counts from
// zero (counters with labels may appear on first use); one that shrank
// was reset by a restart and counts from zero as well.
func faultDeltas(before, after metricPage) map[string]float64 {
	out := map[string]float64{}
	for k, s := range after {
		if !isFault(s) {
			continue
		}
		d := s.value
		if b, ok := before[k]; ok && b.value <= s.value {
			d = s.value - b.value
		}
		if d > 0 {
			out[k] = d
		}
	}
	return out
}

// queued is what a node still holds to send or apply: the post-hook
// queue and the forward queues. A run ends only when every node's is
// zero, so a change dropped after the load stopped is still counted.
func queued(p metricPage) float64 {
	return p.sum("karuta_hooks_post_queue_depth") + p.sum("karuta_cluster_forward_queue_depth")
}

// NodeReport is one node's side of a run, read from its metrics page
// before the load and after it has drained.
type NodeReport struct {
	Metrics string `json:"metrics"`
	// Faults holds each fault series that grew, by series, with its
	// increase.
	Faults map[string]float64 `json:"faults,omitempty"`
	// StoredPeers is karuta_store_peers after the run, every family and
	// kind; CachedPeers is karuta_cluster_read_cache_peers (copies of
	// swarms owned elsewhere), -1 when the node does not export it.
	StoredPeers float64 `json:"stored_peers"`
	CachedPeers float64 `json:"cached_peers"`
	// Undrained is what the node still had queued when the bench gave up
	// waiting for it (--drain-timeout).
	Undrained float64 `json:"undrained,omitempty"`
}

// Held is the peers the node holds in memory: stored plus cached.
func (n NodeReport) Held() float64 { return n.StoredPeers + max(n.CachedPeers, 0) }

// nodeReport compares a node's pages from before and after a run.
func nodeReport(url string, before, after metricPage) NodeReport {
	n := NodeReport{
		Metrics:     url,
		Faults:      faultDeltas(before, after),
		StoredPeers: after.sum("karuta_store_peers"),
		CachedPeers: -1,
		Undrained:   queued(after),
	}
	if after.has("karuta_cluster_read_cache_peers") {
		n.CachedPeers = after.sum("karuta_cluster_read_cache_peers")
	}
	return n
}

// Memory compares the swarm memory held per node with its fair share:
// a cluster of Nodes with Replicas owners a swarm should hold
// Replicas/Nodes of the whole on each node, cached copies included.
type Memory struct {
	// Whole is the distinct peers of the population (--peers, less the
	// port collisions of swarms over 65535 peers), all in the tracker once
	// a run has primed it.
	Whole    float64 `json:"whole"`
	Nodes    int     `json:"nodes"`
	Replicas int     `json:"replicas"`
	// Share is min(Replicas, Nodes)/Nodes, the fraction of the whole a
	// node should hold.
	Share float64 `json:"share"`
	// MaxHeld is the most peers one node holds, stored plus cached, and
	// MaxHeldShare that as a fraction of the whole; TotalHeld sums every
	// node's, so TotalHeld/Whole is the copies kept of each peer.
	MaxHeld      float64 `json:"max_held"`
	MaxHeldShare float64 `json:"max_held_share"`
	TotalHeld    float64 `json:"total_held"`
	// Ratio is MaxHeldShare/Share: at most 1.1 meets issue 18's target.
	Ratio float64 `json:"ratio"`
}

// memoryOf sums the nodes' memory against the whole population.
func memoryOf(nodes []NodeReport, whole float64, replicas int) *Memory {
	if len(nodes) == 0 || whole <= 0 {
		return nil
	}
	m := &Memory{Whole: whole, Nodes: len(nodes), Replicas: max(replicas, 1)}
	m.Share = float64(min(m.Replicas, m.Nodes)) / float64(m.Nodes)
	for _, n := range nodes {
		h := n.Held()
		m.TotalHeld += h
		m.MaxHeld = max(m.MaxHeld, h)
	}
	m.MaxHeldShare = m.MaxHeld / whole
	m.Ratio = m.MaxHeldShare / m.Share
	return m
}

// invalidReasons lists why a run's figures cannot be trusted: any error
// or timeout the bench saw, any fault counter that grew on any node,
// anything a node could not drain, and any datagram the kernel dropped.
// Empty means valid.
func invalidReasons(r *Result) []string {
	var out []string
	if r.Errors > 0 {
		out = append(out, fmt.Sprintf("%d errors (tracker %d, malformed %d, network %d)", r.Errors, r.TrackerErrors, r.Malformed, r.NetErrors))
	}
	if r.Timeouts > 0 {
		out = append(out, fmt.Sprintf("%d timeouts", r.Timeouts))
	}
	if p := r.Prime; p != nil && p.Failed > 0 {
		out = append(out, fmt.Sprintf("priming: %d of %d peers not announced", p.Failed, p.Peers))
	}
	faults := map[string]float64{}
	var undrained []string
	for _, n := range r.Nodes {
		for k, v := range n.Faults {
			faults[k] += v
		}
		if n.Undrained > 0 {
			undrained = append(undrained, fmt.Sprintf("%s %.0f", n.Metrics, n.Undrained))
		}
	}
	for _, k := range sortedKeys(faults) {
		out = append(out, fmt.Sprintf("%s +%.0f", k, faults[k]))
	}
	if len(undrained) > 0 {
		out = append(out, "still queued after the drain timeout: "+strings.Join(undrained, ", "))
	}
	for _, d := range r.SocketDrops {
		if d.Drops > 0 {
			out = append(out, fmt.Sprintf("kernel dropped %d datagrams at %s (%s)", d.Drops, d.Addr, d.Side))
		}
	}
	return out
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
