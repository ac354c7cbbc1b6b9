package loadgen

import (
	"math"
	"strings"
	"testing"
)

// page builds a metric page from sample lines.
func page(t *testing.T, lines ...string) metricPage {
	t.Helper()
	p, err := parseMetricPage([]byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestIsFault(t *testing.T) {
	for line, want := range map[string]bool{
		`karuta_cluster_forwarded_changes_total{result="ok"} 1`:                                 false,
		`karuta_cluster_forwarded_changes_total{result="unreachable"} 1`:                        true,
		`karuta_cluster_forwarded_changes_total{result="queue_full"} 1`:                         true,
		`karuta_cluster_forwarded_changes_total{result="a_result_added_later"} 1`:               true,
		`karuta_cluster_reads_total{result="failed"} 1`:                                         true,
		`karuta_cluster_reads_total{result="stale"} 1`:                                          true,
		`karuta_cluster_reads_total{result="fetched"} 1`:                                        false,
		`karuta_cluster_reads_total{result="local"} 1`:                                          false,
		`karuta_hooks_post_dropped_total 1`:                                                     true,
		`karuta_frontend_dropped_total{frontend="udp",reason="connect_rate"} 1`:                 true,
		`karuta_cluster_data_rejected_total{reason="not_member"} 1`:                             true,
		`karuta_frontend_connections_refused_total{frontend="http",reason="max_connections"} 1`: true,
		`karuta_frontend_requests_total{action="announce",frontend="udp",result="error"} 1`:     true,
		`karuta_frontend_requests_total{action="announce",frontend="udp",result="ok"} 1`:        false,
		`karuta_store_ignored_changes_total{reason="unknown_op"} 1`:                             true,
		`karuta_cluster_handoff_failures_total 1`:                                               true,
		`karuta_cluster_handoff_swarms_total{direction="dropped"} 1`:                            false,
		`karuta_cluster_received_changes_total 1`:                                               false,
		`karuta_hooks_post_queue_depth 1`:                                                       false,
		`karuta_udp_flood_dropped_total 1`:                                                      true,
		`karuta_dropped_gauge 1`:                                                                false,
		`promhttp_metric_handler_errors_total 1`:                                                false,
		`karuta_store_gc_removed_peers_total 1`:                                                 false,
	} {
		s, err := parseSample(line)
		if err != nil {
			t.Fatal(err)
		}
		if got := isFault(s); got != want {
			t.Errorf("%s: fault %v, want %v", line, got, want)
		}
	}
}

func TestFaultDeltas(t *testing.T) {
	before := page(t,
		`karuta_cluster_forwarded_changes_total{result="ok"} 100`,
		`karuta_cluster_forwarded_changes_total{result="unreachable"} 5`,
		`karuta_cluster_reads_total{result="failed"} 7`,
		`karuta_hooks_post_dropped_total 3`,
	)
	after := page(t,
		`karuta_cluster_forwarded_changes_total{result="ok"} 900`,        // success: ignored
		`karuta_cluster_forwarded_changes_total{result="unreachable"} 5`, // unchanged: not listed
		`karuta_cluster_reads_total{result="failed"} 2`,                  // reset by a restart: counts from 0
		`karuta_hooks_post_dropped_total 10`,
		`karuta_frontend_dropped_total{frontend="udp",reason="too_long"} 4`, // new series
	)
	got := faultDeltas(before, after)
	want := map[string]float64{
		`karuta_cluster_reads_total{result="failed"}`:                     2,
		`karuta_hooks_post_dropped_total`:                                 7,
		`karuta_frontend_dropped_total{frontend="udp",reason="too_long"}`: 4,
	}
	if len(got) != len(want) {
		t.Errorf("deltas %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: +%v, want +%v", k, got[k], v)
		}
	}
}

func TestNodeReportAndMemory(t *testing.T) {
	before := page(t, `karuta_cluster_data_rejected_total{reason="not_member"} 0`)
	nodes := []NodeReport{
		nodeReport("http://a/metrics", before, page(t,
			`karuta_cluster_data_rejected_total{reason="not_member"} 3`,
			`karuta_store_peers{family="ipv4",kind="seeder"} 300`,
			`karuta_store_peers{family="ipv4",kind="leecher"} 400`,
			`karuta_cluster_read_cache_peers 100`,
			`karuta_cluster_forward_queue_depth{peer="b"} 2`,
		)),
		nodeReport("http://b/metrics", before, page(t,
			`karuta_store_peers{family="ipv4",kind="leecher"} 600`,
		)),
	}
	a, b := nodes[0], nodes[1]
	if a.StoredPeers != 700 || a.CachedPeers != 100 || a.Held() != 800 || a.Undrained != 2 {
		t.Errorf("node a = %+v, held %v", a, a.Held())
	}
	if a.Faults[`karuta_cluster_data_rejected_total{reason="not_member"}`] != 3 {
		t.Errorf("node a faults %v", a.Faults)
	}
	if b.CachedPeers != -1 || b.Held() != 600 || len(b.Faults) != 0 {
		t.Errorf("node b = %+v: no cache gauge must read as -1 and hold nothing extra", b)
	}

	m := memoryOf(nodes, 1000, 2)
	if m.Share != 1 || m.MaxHeld != 800 || m.MaxHeldShare != 0.8 || m.TotalHeld != 1400 || m.Ratio != 0.8 {
		t.Errorf("two nodes, replicas 2: %+v", m)
	}
	m = memoryOf(append(nodes, NodeReport{StoredPeers: 0, CachedPeers: 0}, NodeReport{}), 1000, 2)
	if m.Share != 0.5 || math.Abs(m.Ratio-1.6) > 1e-9 {
		t.Errorf("four nodes, replicas 2: share %v ratio %v, want 0.5 and 1.6", m.Share, m.Ratio)
	}
	if m := memoryOf(nodes, 0, 2); m != nil {
		t.Errorf("no whole: %+v, want nil", m)
	}
}

func TestInvalidReasons(t *testing.T) {
	clean := &Result{Nodes: []NodeReport{{Metrics: "a"}}, SocketDrops: []SocketDrops{{Addr: "127.0.1.1:6969", Side: "server"}}}
	if r := invalidReasons(clean); len(r) != 0 {
		t.Errorf("clean run: %v", r)
	}
	bad := &Result{
		Errors: 2, TrackerErrors: 1, NetErrors: 1, Timeouts: 3,
		Prime: &PrimeResult{Peers: 10, Failed: 1},
		Nodes: []NodeReport{
			{Metrics: "a", Faults: map[string]float64{`karuta_hooks_post_dropped_total`: 4}},
			{Metrics: "b", Faults: map[string]float64{`karuta_hooks_post_dropped_total`: 1}, Undrained: 9},
		},
		SocketDrops: []SocketDrops{{Addr: "127.0.1.1:6969", Side: "server", Drops: 12}},
	}
	got := strings.Join(invalidReasons(bad), "\n")
	for _, want := range []string{
		"2 errors (tracker 1, malformed 0, network 1)",
		"3 timeouts",
		"priming: 1 of 10 peers not announced",
		"karuta_hooks_post_dropped_total +5",
		"still queued after the drain timeout: b 9",
		"kernel dropped 12 datagrams at 127.0.1.1:6969 (server)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("reasons:\n%s\nwant a line %q", got, want)
		}
	}
	for _, only := range []*Result{{Timeouts: 1}, {Errors: 1, Malformed: 1}, {SocketDrops: []SocketDrops{{Side: "client", Drops: 1}}}} {
		if len(invalidReasons(only)) != 1 {
			t.Errorf("%+v: want exactly one reason, got %v", only, invalidReasons(only))
		}
	}
}
