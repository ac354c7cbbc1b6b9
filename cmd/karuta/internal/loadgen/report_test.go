package loadgen

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sampleResult() *Result {
	st := &stats{}
	st.recording.Store(true)
	for i := range 100 {
		st.record(actAnnounce, ok, time.Duration(i+1)*time.Millisecond, 10)
	}
	st.record(actAnnounce, trackerError, time.Millisecond, 0)
	st.record(actScrape, ok, 2*time.Millisecond, 1)
	st.record(actScrape, timeout, 0, 0)
	st.record(actConnect, netError, 0, 0)
	st.recording.Store(false)
	st.record(actAnnounce, ok, time.Hour, 0) // after the measurement: not counted
	r := st.result(2 * time.Second)
	r.URLs, r.Protocol, r.Mode, r.Concurrency = []string{"udp://127.0.0.1:6969/announce"}, "udp", "closed", 4
	r.Server = serverUse([]int{7}, procSample{schedCPU: time.Second}, procSample{schedCPU: time.Second + 102*time.Millisecond, peakRSS: 3 << 20}, r.Responses)
	return r
}

func TestResultSums(t *testing.T) {
	r := sampleResult()
	a := r.Actions["announce"]
	if a.Responses != 101 || a.TrackerErrors != 1 || a.PerSec != 50.5 {
		t.Errorf("announce = %+v", a)
	}
	if r.Responses != 102 || r.Errors != 2 || r.Timeouts != 1 || r.NetErrors != 1 || r.RequestsPerSec != 51 {
		t.Errorf("totals: responses %d errors %d timeouts %d net %d requests/s %v", r.Responses, r.Errors, r.Timeouts, r.NetErrors, r.RequestsPerSec)
	}
	if r.PeersPerAnnounce != 10 {
		t.Errorf("peers per announce = %v, want 10", r.PeersPerAnnounce)
	}
	if l := a.Latency; l.P50 < 50e3 || l.P50 > 51e3 || l.P99 < 99e3 || l.P99 > 100e3 || l.Max != 100e3 {
		t.Errorf("announce latency = %+v", l)
	}
	if s := r.Server; s.CPUPerRequestUS != 1000 || s.CPUSource != "schedstat" || s.PeakRSSBytes != 3<<20 {
		t.Errorf("server = %+v", s)
	}
}

func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleResult().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"urls", "protocol", "mode", "responses", "responses_per_sec", "requests_per_sec",
		"errors", "tracker_errors", "malformed", "net_errors", "timeouts", "latency_us", "actions", "server"} {
		if _, ok := m[key]; !ok {
			t.Errorf("JSON has no %q: %s", key, buf.Bytes())
		}
	}
	lat := m["latency_us"].(map[string]any)
	for _, key := range []string{"p50", "p99", "p999", "max", "mean"} {
		if _, ok := lat[key]; !ok {
			t.Errorf("latency_us has no %q", key)
		}
	}
	srv := m["server"].(map[string]any)
	if srv["cpu_per_request_us"] != 1000.0 || srv["peak_rss_bytes"] != float64(3<<20) {
		t.Errorf("server = %v", srv)
	}
	var back Result
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back.Actions["scrape"].Timeouts != 1 {
		t.Errorf("round trip: %v, %+v", err, back.Actions["scrape"])
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleResult().WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(out, "\n")
	if lines[0] != "udp://127.0.0.1:6969/announce (udp), closed loop, 4 clients, 2.0 s measured" {
		t.Errorf("header = %q", lines[0])
	}
	wantRows := map[string][]string{
		"announce": {"announce", "50", "101", "1", "0", "0", "0", "50.07ms", "99.09ms", "100.00ms", "100.00ms"},
		"scrape":   {"scrape", "0", "1", "0", "0", "0", "1", "2.00ms", "2.00ms", "2.00ms", "2.00ms"},
		"connect":  {"connect", "0", "0", "0", "0", "1", "0", "0µs", "0µs", "0µs", "0µs"},
		"total":    {"total", "51", "102", "1", "0", "1", "1"},
	}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if want, ok := wantRows[f[0]]; ok {
			delete(wantRows, f[0])
			if len(f) < len(want) || strings.Join(f[:len(want)], " ") != strings.Join(want, " ") {
				t.Errorf("row %q, want %q", l, strings.Join(want, " "))
			}
		}
	}
	if len(wantRows) > 0 {
		t.Errorf("rows missing %v in:\n%s", wantRows, out)
	}
	if !strings.Contains(out, "server pid 7: 0.10 s CPU (schedstat), 1000.00 µs CPU per response, peak RSS 3.0 MiB") {
		t.Errorf("no server line in:\n%s", out)
	}
}

func TestProgressLine(t *testing.T) {
	for _, tty := range []bool{false, true} {
		var buf bytes.Buffer
		st := &stats{}
		p := newProgress(&buf, tty, st, time.Now().Add(-time.Second), 0)
		st.record(actAnnounce, ok, time.Millisecond, 0)
		st.record(actScrape, timeout, 0, 0)
		p.line()
		p.line()
		p.done()
		out := buf.String()
		if n := strings.Count(out, "announce"); n != 2 || !strings.Contains(out, "timeouts 1") {
			t.Errorf("tty %v: %q", tty, out)
		}
		if tty != strings.Contains(out, "\r") || strings.Count(out, "\n") != 2-btoi(tty) {
			t.Errorf("tty %v: line ends in %q", tty, out)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
