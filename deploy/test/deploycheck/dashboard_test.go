package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/jwt"
)

func TestInterpolate(t *testing.T) {
	vars := map[string]value{
		"all":    {values: []string{"a", "b"}, all: true, allValue: ".*", multi: true},
		"allno":  {values: []string{"a.b", "c"}, all: true, multi: true},
		"single": {values: []string{`it's`}},
		"multi1": {values: []string{"n1:6880"}, multi: true},
		"multi2": {values: []string{"x", "y|z"}, multi: true},
	}
	builtins := map[string]string{"__rate_interval": "8s", "__interval": "2s"}
	tests := []struct {
		expr, want, err string
	}{
		{`up{job=~"$all"}`, `up{job=~".*"}`, ""},
		{`up{job=~"${all}"}`, `up{job=~".*"}`, ""},
		{`up{job=~"[[all]]"}`, `up{job=~".*"}`, ""},
		{`up{job=~"$allno"}`, `up{job=~"(a\\.b|c)"}`, ""},
		{`up{x="$single"}`, `up{x="it\\'s"}`, ""},
		{`up{i=~"$multi1"}`, `up{i=~"n1:6880"}`, ""},
		{`up{i=~"$multi2"}`, `up{i=~"(x|y\\|z)"}`, ""},
		{`up{i=~"${multi2:pipe}"}`, `up{i=~"x|y|z"}`, ""},
		{`rate(x[$__rate_interval]) / rate(y[$__interval])`, `rate(x[8s]) / rate(y[2s])`, ""},
		{`up{job="$nope"}`, "", `unknown variable "nope"`},
		{`up{job="${all:json}"}`, "", "format :json is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			got, err := interpolate(tt.expr, vars, builtins)
			switch {
			case tt.err != "":
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
			case err != nil:
				t.Fatal(err)
			case got != tt.want:
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestIntervals(t *testing.T) {
	tests := []struct {
		rng          time.Duration
		points       int
		min, scrape  time.Duration
		wantInterval time.Duration
		wantRate     time.Duration
	}{
		// 1h over 1000 points is 3.6s, rounded to 5s; four 2s scrapes are more than 5s+2s.
		{time.Hour, 0, 0, 2 * time.Second, 5 * time.Second, 8 * time.Second},
		// Grafana's default scrape interval of 15s: four scrapes win.
		{time.Hour, 0, 0, 15 * time.Second, 15 * time.Second, time.Minute},
		{6 * time.Hour, 0, 0, 15 * time.Second, 20 * time.Second, time.Minute},
		{24 * time.Hour, 500, 0, 15 * time.Second, 2 * time.Minute, 135 * time.Second},
		// A panel's min interval raises it.
		{time.Hour, 0, 30 * time.Second, 2 * time.Second, 30 * time.Second, 32 * time.Second},
	}
	for _, tt := range tests {
		iv, rate := intervals(tt.rng, tt.points, tt.min, tt.scrape)
		if iv != tt.wantInterval || rate != tt.wantRate {
			t.Errorf("intervals(%s, %d, %s, %s) = %s, %s; want %s, %s", tt.rng, tt.points, tt.min, tt.scrape, iv, rate, tt.wantInterval, tt.wantRate)
		}
	}
}

// fakeProm answers label values and range queries: expressions in empty
// get no series, those in nan a series of NaN, the rest one series.
func fakeProm(t *testing.T, labels map[string][]string, empty, nan []string) *prom {
	t.Helper()
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var data any
		switch {
		case strings.HasPrefix(r.URL.Path, "/api/v1/label/"):
			data = labels[strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/v1/label/"), "/values")]
		case r.URL.Path == "/api/v1/query_range":
			q := r.URL.Query().Get("query")
			seen = append(seen, q)
			v := "1"
			for _, e := range empty {
				if strings.Contains(q, e) {
					data = map[string]any{"resultType": "matrix", "result": []any{}}
				}
			}
			for _, e := range nan {
				if strings.Contains(q, e) {
					v = "NaN"
				}
			}
			if data == nil {
				data = map[string]any{"resultType": "matrix", "result": []any{
					map[string]any{"metric": map[string]string{}, "values": [][2]any{{1.0, v}}},
				}}
			}
		default:
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "success", "data": data})
	}))
	t.Cleanup(srv.Close)
	return &prom{base: srv.URL, hc: srv.Client()}
}

const testDashboard = `{
  "time": {"from": "now-1h", "to": "now"},
  "templating": {"list": [
    {"name": "datasource", "type": "datasource", "query": "prometheus"},
    {"name": "job", "type": "query", "query": {"query": "label_values(karuta_build_info, job)"}, "includeAll": true, "multi": true, "allValue": ".*"},
    {"name": "instance", "type": "query", "definition": "label_values(karuta_build_info{job=~\"$job\"}, instance)", "includeAll": true, "multi": true, "allValue": ".*"}
  ]},
  "panels": [
    {"title": "ready", "targets": [{"refId": "A", "expr": "sum(karuta_ready{job=~\"$job\",instance=~\"$instance\"})"}]},
    {"title": "row", "type": "row", "panels": [
      {"title": "rate", "targets": [{"refId": "A", "expr": "rate(karuta_x_total{job=~\"$job\"}[$__rate_interval])"},
                                   {"refId": "B", "expr": "histogram_quantile(0.9, rate(karuta_h_bucket[$__rate_interval]))"},
                                   {"refId": "C", "expr": "karuta_hidden", "hide": true}]}
    ]}
  ]
}`

func writeDashboard(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.json")
	if err := os.WriteFile(path, []byte(testDashboard), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckDashboard(t *testing.T) {
	labels := map[string][]string{"job": {"karuta"}, "instance": {"n1:6880", "n2:6880"}}
	tests := []struct {
		name       string
		labels     map[string][]string
		empty, nan []string
		wantErr    string
		wantOut    []string
	}{
		{name: "all have data", labels: labels, wantOut: []string{"ok    ready [A]", "ok    rate [A]", "ok    rate [B]", "all 3 dashboard expressions returned data"}},
		{name: "an empty panel fails", labels: labels, empty: []string{"karuta_x_total"}, wantErr: "1 of 3", wantOut: []string{"FAIL  rate [A]: no series", `karuta_x_total{job=~".*"}[8s]`}},
		{name: "NaN only fails", labels: labels, nan: []string{"karuta_h_bucket"}, wantErr: "1 of 3", wantOut: []string{"FAIL  rate [B]: 1 series, none with a number"}},
		{name: "a variable without values fails", labels: map[string][]string{"job": {"karuta"}}, wantErr: "variable instance: no values"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fakeProm(t, tt.labels, tt.empty, tt.nan)
			var out bytes.Buffer
			err := checkDashboard(context.Background(), p, writeDashboard(t), time.Minute, 2*time.Second, &out)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("err = %v\n%s", err, out.String())
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q\n%s", err, tt.wantErr, out.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestRealDashboardResolves checks the repository's dashboard against a
// fake Prometheus that has every series: its variables resolve and every
// expression interpolates, so the deploy stage's failures are about data.
func TestRealDashboardResolves(t *testing.T) {
	p := fakeProm(t, map[string][]string{"job": {"karuta"}, "instance": {"n1"}}, nil, nil)
	var out bytes.Buffer
	if err := checkDashboard(context.Background(), p, "../../grafana/karuta-dashboard.json", time.Minute, 2*time.Second, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "dashboard expressions returned data") {
		t.Errorf("output lacks the summary:\n%s", out.String())
	}
}

// TestSignTokenPassesTheHook signs a token and has the real jwt hook check
// it: it admits the announce of the token's infohash and no other.
func TestSignTokenPassesTheHook(t *testing.T) {
	dir := t.TempDir()
	if err := writeJWTKey(dir); err != nil {
		t.Fatal(err)
	}
	ihHex := strings.Repeat("ab", 20)
	tok, err := signToken(dir, ihHex, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cfg := jwt.DefaultConfig()
	cfg.Keys = []string{filepath.Join(dir, "jwt.pub.pem")}
	h, err := jwt.New(cfg, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ih, err := bittorrent.ParseInfoHash(ihHex)
	if err != nil {
		t.Fatal(err)
	}
	req := bittorrent.AnnounceRequest{InfoHash: ih, Params: bittorrent.Params{Query: "jwt=" + tok}}
	if err := h.HandleAnnounce(context.Background(), &req, &bittorrent.AnnounceResponse{}); err != nil {
		t.Errorf("the hook refuses the signed announce: %v", err)
	}
	req.InfoHash[0] ^= 1
	if err := h.HandleAnnounce(context.Background(), &req, &bittorrent.AnnounceResponse{}); err == nil {
		t.Error("the hook admits the token for another infohash")
	}
	if _, err := signToken(dir, "abc", time.Now()); err == nil {
		t.Error("a short infohash was signed")
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := freePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v: want 5 distinct positive ports", ports)
		}
		seen[p] = true
	}
}
