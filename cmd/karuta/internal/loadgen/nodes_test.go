package loadgen

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeNode serves a metrics page and, when replicas is above zero, a
// /cluster page. Each scrape of /metrics calls page with the scrape's
// number, from 1.
func fakeNode(t *testing.T, replicas int, page func(n int) string) string {
	t.Helper()
	var scrapes atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			_, _ = io.WriteString(w, page(int(scrapes.Add(1))))
		case "/cluster":
			if replicas == 0 {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, `{"node":"n1","ring":{"epoch":3,"replicas":%d,"settled":true,"whole":true,"members":[]}}`, replicas)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}

func TestNodeClientDrainAndReplicas(t *testing.T) {
	// The forward queue empties on the third scrape.
	u := fakeNode(t, 2, func(n int) string {
		return fmt.Sprintf("karuta_cluster_forward_queue_depth{peer=\"b\"} %d\nkaruta_hooks_post_queue_depth 0\n", max(3-n, 0))
	})
	nc := newNodeClient([]string{u})
	pages, err := nc.drain(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if q := queued(pages[0]); q != 0 {
		t.Errorf("drained page still has %v queued", q)
	}
	if r, err := nc.replicas(context.Background()); r != 2 || err != nil {
		t.Errorf("replicas = %d, %v; want 2", r, err)
	}

	stuck := newNodeClient([]string{fakeNode(t, 0, func(int) string { return "karuta_hooks_post_queue_depth 5\n" })})
	start := time.Now()
	pages, err = stuck.drain(context.Background(), 200*time.Millisecond)
	if err != nil || queued(pages[0]) != 5 {
		t.Errorf("stuck node: %v, %v; want its last page, 5 queued", pages, err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 3*time.Second {
		t.Errorf("gave up after %v, want the 200ms timeout", d)
	}
	if r, err := stuck.replicas(context.Background()); r != 1 || err != nil {
		t.Errorf("a node with no /cluster: replicas %d, %v; want 1 (it holds everything)", r, err)
	}

	if _, err := newNodeClient([]string{u + "/nothing"}).scrape(context.Background()); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("scrape of a missing page: %v", err)
	}
	bad := newNodeClient([]string{fakeNode(t, 0, func(int) string { return "not a metrics page\n" })})
	if _, err := bad.scrape(context.Background()); err == nil {
		t.Error("scrape of a bad page: no error")
	}
}

// TestRunChecksNodes runs a short load against a fake tracker whose node
// counts a dropped post-hook change after the run started, and checks
// that the result is INVALID and names it; a node that counts nothing
// gives a valid run with its memory compared against the population.
func TestRunChecksNodes(t *testing.T) {
	addr := emptyTracker(t, nil)
	for _, tt := range []struct {
		name    string
		dropped func(n int) int
		invalid bool
	}{
		{"clean", func(int) int { return 7 }, false},
		{"a drop", func(n int) int { return 7 + min(n-1, 1) }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			m := fakeNode(t, 2, func(n int) string {
				mu.Lock()
				defer mu.Unlock()
				return fmt.Sprintf("karuta_hooks_post_dropped_total %d\nkaruta_store_peers{family=\"ipv4\",kind=\"seeder\"} 60\nkaruta_cluster_read_cache_peers 6\n", tt.dropped(n))
			})
			cfg := Default()
			cfg.URLs, cfg.Metrics, cfg.Concurrency, cfg.Workers = []string{"udp://" + addr + "/announce"}, []string{m}, 2, 1
			cfg.Duration, cfg.Warmup, cfg.Timeout = 100*time.Millisecond, 0, 200*time.Millisecond
			cfg.Swarms, cfg.Peers, cfg.ScrapeRatio, cfg.Prime = 10, 100, 0, true
			res, err := Run(context.Background(), cfg, io.Discard, false)
			if err != nil {
				t.Fatal(err)
			}
			if res.Invalid != tt.invalid {
				t.Errorf("invalid %v (%v), want %v", res.Invalid, res.InvalidReasons, tt.invalid)
			}
			if tt.invalid && (len(res.InvalidReasons) != 1 || res.InvalidReasons[0] != "karuta_hooks_post_dropped_total +1") {
				t.Errorf("reasons %q, want the one drop", res.InvalidReasons)
			}
			if res.Prime == nil || res.Prime.Peers != 100 || res.Prime.Failed != 0 {
				t.Errorf("prime = %+v, want 100 peers announced", res.Prime)
			}
			if mem := res.Memory; mem == nil || mem.MaxHeld != 66 || mem.Whole != 100 || mem.Share != 1 {
				t.Errorf("memory = %+v, want 66 of 100 held with replicas 2 on one node", mem)
			}
			var sb strings.Builder
			if err := res.WriteTable(&sb); err != nil {
				t.Fatal(err)
			}
			if verdict := map[bool]string{true: "INVALID:", false: "VALID:"}[tt.invalid]; !strings.Contains(sb.String(), "\n"+verdict) {
				t.Errorf("table has no %s line:\n%s", verdict, sb.String())
			}
		})
	}
}
