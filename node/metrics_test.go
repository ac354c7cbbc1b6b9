package node

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/types/infohash"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// Series keyed by a member rather than by an outcome: they come and go
// with the members (forward_queue_depth with each destination a node has
// forwarded to), so they may be absent at start.
var seriesByMember = []string{"karuta_cluster_forward_queue_depth"}

// Series that can never move and so must not exist: the HTTP frontend
// neither drops requests unanswered nor answers connects, no request of
// unknown action is answered ok, and a rate_limit hook with per_subnet
// off refuses nothing by subnet.
var neverMove = []string{
	`karuta_frontend_dropped_total{frontend="http"`,
	`karuta_frontend_requests_total{action="connect",frontend="http"`,
	`karuta_frontend_request_duration_seconds_count{action="connect",frontend="http"`,
	`karuta_frontend_requests_total{action="unknown",frontend="udp",result="ok"`,
	`karuta_hook_rate_limited_total{scope="subnet"`,
}

// TestMetricsExistFromTheStart checks the registry of a clustered node
// with every optional part that has metrics (swarm file, full scrape,
// rate_limit) against the rules every metric follows, so new ones keep
// them (CoreDNS's metric naming test is the model):
//
//   - promlint finds nothing;
//   - every metric with labels has its series at start, each label value
//     at zero (rate() and increase() miss the first event of a series
//     that appears with it), but for the few keyed by member;
//   - traffic of every kind (announces and scrapes over both frontends,
//     malformed and refused requests, a full scrape, forwards and reads
//     between the nodes, a node leaving) creates no counter or histogram
//     series that did not exist at start;
//   - series that can never move do not exist.
func TestMetricsExistFromTheStart(t *testing.T) {
	hooks, err := Parse([]byte("hooks:\n  - name: rate_limit\n    options: {per_ip: {rate: 1000, burst: 3}, per_subnet: {rate: 0}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	full := func(c *Config) {
		c.Store.SnapshotFile = filepath.Join(t.TempDir(), "swarms")
		c.Frontends.HTTP.FullScrape = true
		c.Hooks = hooks.Hooks
	}
	a := startClusterNode(t, "m1", nil, full)
	b := startClusterNode(t, "m2", []string{a.Addrs().Gossip}, full)
	eventually.NoError(t, convergeWithin, "two nodes converge", func() error { return converged([]*Node{a, b}) })
	reg := a.Registry()

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	start := series(t, reg)
	for _, d := range labelledDescs(reg) {
		if slices.Contains(seriesByMember, d) {
			continue
		}
		if !slices.ContainsFunc(start, func(s string) bool { return strings.HasPrefix(s, d+"{") || strings.HasPrefix(s, d+"_count{") }) {
			t.Errorf("%s has labels but no series at start: give every label value its series when the metric is made", d)
		}
	}

	traffic(t, a, b)
	if err := b.Shutdown(t.Context()); err != nil {
		t.Errorf("m2's shutdown: %v", err)
	}
	after := series(t, reg)
	for _, s := range after {
		if !slices.Contains(start, s) && counterOrHistogram(t, reg, s) {
			t.Errorf("%s appeared with traffic; it must exist at zero from the start", s)
		}
	}
	for _, s := range after {
		for _, never := range neverMove {
			if strings.HasPrefix(s, never) {
				t.Errorf("%s exists, but can never move", s)
			}
		}
	}
}

// traffic sends a's node some of everything a tracker sees.
func traffic(t *testing.T, a, b *Node) {
	t.Helper()
	for i, n := range []*Node{a, b} {
		udpc := newClient(t, "udp://"+n.Addrs().UDP)
		for k := range 4 { // more than rate_limit's burst of 3
			req := tracker.AnnounceRequest{InfoHash: infohash.T{0x3e, byte(k)}, PeerId: peerID(byte('a' + i)), Port: uint16(7000 + k), Left: 1, NumWant: -1}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			_, _ = udpc.cl.Announce(ctx, req, trhttp.AnnounceOpt{})
			cancel()
		}
		base := "http://" + n.Addrs().HTTP
		for _, path := range []string{
			"/announce?info_hash=%3e%01%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00&peer_id=-KT0001-metrics00000&port=7100&left=0",
			"/announce?info_hash=x",
			"/announce?numwant=99999999999999999999",
			"/scrape?info_hash=%3e%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00",
			"/scrape",
			"/nowhere",
		} {
			_, _ = httpGet(t, base+path)
		}
		conn, err := net.Dial("udp", n.Addrs().UDP)
		if err != nil {
			t.Fatal(err)
		}
		for _, pkt := range [][]byte{{1, 2, 3}, make([]byte, 16), append(make([]byte, 8), 0, 0, 0, 9, 0, 0, 0, 1)} {
			_, _ = conn.Write(pkt)
		}
		_ = conn.Close()
	}
	time.Sleep(500 * time.Millisecond) // forwards, reads and the UDP drops land
}

// series lists every sample of reg as name{labels}, labels sorted.
func series(t *testing.T, reg prometheus.Gatherer) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out = append(out, sampleName(mf, m))
		}
	}
	return out
}

func sampleName(mf *dto.MetricFamily, m *dto.Metric) string {
	var labels []string
	for _, l := range m.GetLabel() {
		labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	slices.Sort(labels)
	name := mf.GetName()
	if mf.GetType() == dto.MetricType_HISTOGRAM {
		name += "_count"
	}
	return name + "{" + strings.Join(labels, ",") + "}"
}

// counterOrHistogram reports whether the series s of reg is a counter's
// or a histogram's: gauges keyed by member come and go with members.
func counterOrHistogram(t *testing.T, reg prometheus.Gatherer, s string) bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	name, _, _ := strings.Cut(s, "{")
	for _, mf := range mfs {
		if mf.GetName() == strings.TrimSuffix(name, "_count") || mf.GetName() == name {
			return mf.GetType() == dto.MetricType_COUNTER || mf.GetType() == dto.MetricType_HISTOGRAM
		}
	}
	return false
}

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

// labelledDescs lists the names of reg's metrics that have variable
// labels, from the registry's descriptors (which exist before any series).
func labelledDescs(reg *prometheus.Registry) []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	var out []string
	for d := range ch {
		if m := descRE.FindStringSubmatch(d.String()); m != nil && strings.TrimSpace(m[2]) != "" {
			out = append(out, m[1])
		}
	}
	return out
}
