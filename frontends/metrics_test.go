package frontends

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRecordTally checks that a batch recorded through a Tally counts and
// observes what the same requests recorded one by one do, results a
// frontend cannot have included (ignored both ways), and that RecordTally
// empties the tally.
func TestRecordTally(t *testing.T) {
	outcomes := []struct{ action, result string }{
		{ActionAnnounce, ResultOK},
		{ActionAnnounce, ResultOK},
		{ActionAnnounce, ResultError},
		{ActionScrape, ResultClientError},
		{ActionConnect, ResultOK},
		{ActionConnect, ResultError}, // a connect never fails: not counted
		{ActionUnknown, ResultOK},    // nor does an unknown action succeed
		{ActionUnknown, ResultClientError},
	}
	record := func(batch bool) string {
		reg := prometheus.NewRegistry()
		m, err := NewMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		r := m.For("udp")
		var tl Tally
		for _, o := range outcomes {
			if batch {
				tl.Add(o.action, o.result)
			} else {
				r.Record(o.action, o.result, time.Now())
			}
		}
		r.RecordTally(&tl, time.Microsecond)
		if tl != (Tally{}) {
			t.Errorf("batch=%v: the tally holds %v after RecordTally", batch, tl)
		}
		return summary(t, reg)
	}
	one, batch := record(false), record(true)
	if one != batch {
		t.Errorf("one by one:\n%s\nas a batch:\n%s", one, batch)
	}
	for _, want := range []string{
		`karuta_frontend_requests_total{action="announce",frontend="udp",result="ok"} 2`,
		`karuta_frontend_request_duration_seconds{action="announce",frontend="udp"} 3 observed`,
		`karuta_frontend_request_duration_seconds{action="connect",frontend="udp"} 1 observed`,
	} {
		if !strings.Contains(batch, want+"\n") {
			t.Errorf("as a batch:\n%s\nwant the line %s", batch, want)
		}
	}
	var nilRec *Recorder
	tl := Tally{}
	tl.Add(ActionAnnounce, ResultOK)
	nilRec.RecordTally(&tl, 0)
	if tl != (Tally{}) {
		t.Error("a nil Recorder leaves the tally full")
	}
}

// summary lists the request counters of reg with their values and the
// duration histograms with their observation counts, one a line.
func summary(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.GetCounter() != nil:
				fmt.Fprintf(&b, "%s %g\n", name, m.GetCounter().GetValue())
			case m.GetHistogram() != nil:
				fmt.Fprintf(&b, "%s %d observed\n", name, m.GetHistogram().GetSampleCount())
			}
		}
	}
	return b.String()
}
