package loadgen

import (
	"math"
	"os"
	"strings"
	"testing"
)

func TestParseMetricPage(t *testing.T) {
	b, err := os.ReadFile("testdata/metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parseMetricPage(b)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]float64{
		`karuta_cluster_forwarded_changes_total{result="ok"}`:                             120345,
		`karuta_cluster_reads_total{result="local"}`:                                      1.5e6,
		`karuta_cluster_fetch_seconds_bucket{le="+Inf"}`:                                  7,
		`karuta_cluster_fetch_seconds_sum`:                                                0.0123,
		`karuta_hooks_post_queue_depth`:                                                   1,
		`karuta_frontend_requests_total{action="announce",frontend="udp",result="error"}`: 1,
		`karuta_build_info{version="dev \"quoted\" \\ back\nslash"}`:                      1,
		`karuta_frontend_dropped_total{frontend="udp",reason="connect_rate"}`:             2,
		`karuta_store_peers{family="ipv4",kind="leecher"}`:                                700,
		`karuta_cluster_forward_queue_depth{peer="n2"}`:                                   4,
		`karuta_cluster_read_cache_peers`:                                                 250,
		`karuta_cluster_forwarded_changes_total{result="unreachable"}`:                    12,
		`karuta_frontend_requests_total{action="announce",frontend="udp",result="ok"}`:    99,
		`karuta_cluster_reads_total{result="failed"}`:                                     3,
		`karuta_store_peers{family="ipv6",kind="seeder"}`:                                 0,
		`karuta_cluster_fetch_seconds_count`:                                              7,
		`karuta_hooks_post_dropped_total`:                                                 0,
		`karuta_cluster_reads_total{result="stale"}`:                                      0,
		`karuta_cluster_reads_total{result="cached"}`:                                     10,
		`karuta_cluster_reads_total{result="fetched"}`:                                    7,
		`karuta_store_peers{family="ipv4",kind="seeder"}`:                                 300,
		`karuta_store_peers{family="ipv6",kind="leecher"}`:                                0,
		`karuta_cluster_forward_queue_depth{peer="n3"}`:                                   0,
		`karuta_cluster_fetch_seconds_bucket{le="0.0001"}`:                                0,
	} {
		s, ok := p[key]
		if !ok {
			t.Errorf("no series %s", key)
			continue
		}
		if s.value != want {
			t.Errorf("%s = %v, want %v", key, s.value, want)
		}
	}
	if s := p[`karuta_build_info{version="dev \"quoted\" \\ back\nslash"}`]; s.label("version") != "dev \"quoted\" \\ back\nslash" {
		t.Errorf("escaped label read as %q", s.label("version"))
	}
	if s, ok := p[`go_gc_duration_seconds{quantile="0.5"}`]; !ok || !math.IsNaN(s.value) {
		t.Errorf("NaN sample: %+v, %v", s, ok)
	}
	if got := p.sum("karuta_store_peers"); got != 1000 {
		t.Errorf("sum of karuta_store_peers = %v, want 1000", got)
	}
	if got := queued(p); got != 5 {
		t.Errorf("queued = %v, want 4 forwards and 1 post", got)
	}
	if !p.has("karuta_cluster_read_cache_peers") || p.has("karuta_nothing") {
		t.Error("has: wrong answer")
	}
	if len(p) != 25 {
		t.Errorf("%d series, want 25", len(p))
	}
}

func TestParseSampleErrors(t *testing.T) {
	for _, line := range []string{
		`karuta_x`,
		`karuta_x{a="b"}`,
		`karuta_x{a="b" 1`,
		`karuta_x{a=b} 1`,
		`karuta_x{a="b} 1`,
		`karuta_x{a="b",a="c"} 1`,
		`karuta_x{a="\q"} 1`,
		`karuta_x{9a="b"} 1`,
		`karuta_x{a="b"c="d"} 1`,
		`karuta_x one`,
		`karuta_x 1 2 3`,
		`9karuta 1`,
		`{a="b"} 1`,
	} {
		if s, err := parseSample(line); err == nil {
			t.Errorf("%s: parsed as %+v, want an error", line, s)
		}
	}
	for line, want := range map[string]string{
		`karuta_x{} 1`:                     `karuta_x`,
		`karuta_x{a="b",} 1`:               `karuta_x{a="b"}`,
		`karuta_x{ b = "2" , a="1" } +Inf`: `karuta_x{a="1",b="2"}`,
	} {
		s, err := parseSample(line)
		if err != nil {
			t.Errorf("%s: %v", line, err)
			continue
		}
		if k := seriesKey(s.name, s.labels); k != want {
			t.Errorf("%s: key %s, want %s", line, k, want)
		}
	}
	if _, err := parseMetricPage([]byte("ok 1\nbad\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error %v; want one naming line 2", err)
	}
}

// FuzzParseMetricPage checks that no page makes the parser panic, and
// that every series it returns is keyed as seriesKey names it.
func FuzzParseMetricPage(f *testing.F) {
	if b, err := os.ReadFile("testdata/metrics.txt"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`a{b="c\\\"d\n"} 1 2`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseMetricPage(b)
		if err != nil {
			return
		}
		for k, s := range p {
			if seriesKey(s.name, s.labels) != k {
				t.Errorf("series %+v under key %q", s, k)
			}
		}
	})
}
