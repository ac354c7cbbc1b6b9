// Package frontends holds what the HTTP and UDP frontends share: the request
// metrics both report under one set of names.
package frontends

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Actions and results used as metric labels.
const (
	ActionConnect  = "connect"
	ActionAnnounce = "announce"
	ActionScrape   = "scrape"
	ActionUnknown  = "unknown"

	ResultOK          = "ok"
	ResultClientError = "client_error"
	ResultError       = "error"
)

var actions = [...]string{ActionConnect, ActionAnnounce, ActionScrape, ActionUnknown}

// Reasons a frontend drops a request without answering it, used as metric
// labels.
const (
	// DropTooShort is a request too short to carry even a header.
	DropTooShort = "too_short"
	// DropTooLong is a request longer than any valid one.
	DropTooLong = "too_long"
	// DropResponse is a packet that looks like another tracker's reply:
	// answering it with an error could start an endless exchange between
	// two trackers (or a tracker and itself) tricked by a spoofed source.
	DropResponse = "response"
)

var dropReasons = [...]string{DropTooShort, DropTooLong, DropResponse}

// Outcomes of a full scrape (a scrape of every swarm), used as metric labels.
const (
	// FullScrapeOK is a full scrape answered.
	FullScrapeOK = "ok"
	// FullScrapeDisabled is one refused because full scrapes are off.
	FullScrapeDisabled = "disabled"
	// FullScrapeRateLimited is one refused because another was answered
	// too recently or is still being sent.
	FullScrapeRateLimited = "rate_limited"
	// FullScrapeRefused is one a hook refused (passkey, jwt, rate_limit).
	FullScrapeRefused = "refused"
	// FullScrapeError is one that failed, or was cut short, while answering.
	FullScrapeError = "error"
)

var fullScrapeResults = [...]string{FullScrapeOK, FullScrapeDisabled, FullScrapeRateLimited, FullScrapeRefused, FullScrapeError}

// Metrics counts and times requests by frontend, action and result. Create
// one per registry and share it between frontends. Safe for concurrent use.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	dropped  *prometheus.CounterVec
	full     *prometheus.CounterVec
}

// NewMetrics registers the frontend metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "requests_total",
			Help:      "Requests answered, by frontend, action and result.",
		}, []string{"frontend", "action", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "request_duration_seconds",
			Help:      "Time from a parsed request to its answer being written, by frontend and action.",
			Buckets:   []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 250e-3},
		}, []string{"frontend", "action"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "dropped_total",
			Help:      "Requests dropped without an answer, by frontend and reason.",
		}, []string{"frontend", "reason"}),
		full: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "full_scrapes_total",
			Help:      "Scrapes of every swarm, by frontend and result: ok, disabled, rate_limited, refused (by a hook), error.",
		}, []string{"frontend", "result"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.dropped, m.full} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Recorder is the set of metric children of one frontend, resolved up front
// so that recording a request allocates nothing.
type Recorder struct {
	byAction [4]actionRecorder                    // indexed like actions
	dropped  [len(dropReasons)]prometheus.Counter // indexed like dropReasons
	full     [len(fullScrapeResults)]prometheus.Counter
}

type actionRecorder struct {
	ok, clientErr, err prometheus.Counter
	duration           prometheus.Observer
}

// For returns the recorder for the named frontend ("http" or "udp").
func (m *Metrics) For(frontend string) *Recorder {
	r := &Recorder{}
	for i, a := range actions {
		r.byAction[i] = actionRecorder{
			ok:        m.requests.WithLabelValues(frontend, a, ResultOK),
			clientErr: m.requests.WithLabelValues(frontend, a, ResultClientError),
			err:       m.requests.WithLabelValues(frontend, a, ResultError),
			duration:  m.duration.WithLabelValues(frontend, a),
		}
	}
	for i, reason := range dropReasons {
		r.dropped[i] = m.dropped.WithLabelValues(frontend, reason)
	}
	for i, res := range fullScrapeResults {
		r.full[i] = m.full.WithLabelValues(frontend, res)
	}
	return r
}

func actionIndex(action string) int {
	for i, a := range actions {
		if a == action {
			return i
		}
	}
	return len(actions) - 1
}

// Record counts one request of action with result and observes its
// duration since start. A nil Recorder records nothing.
func (r *Recorder) Record(action, result string, start time.Time) {
	if r == nil {
		return
	}
	ar := &r.byAction[actionIndex(action)]
	switch result {
	case ResultOK:
		ar.ok.Inc()
	case ResultClientError:
		ar.clientErr.Inc()
	default:
		ar.err.Inc()
	}
	ar.duration.Observe(time.Since(start).Seconds())
}

// Drop counts one request dropped for reason, one of the Drop constants;
// other reasons are not counted. A nil Recorder records nothing.
func (r *Recorder) Drop(reason string) {
	if r == nil {
		return
	}
	for i, d := range dropReasons {
		if d == reason {
			r.dropped[i].Inc()
			return
		}
	}
}

// FullScrape counts one full scrape with result, one of the FullScrape
// constants. A nil Recorder records nothing.
func (r *Recorder) FullScrape(result string) {
	if r == nil {
		return
	}
	for i, res := range fullScrapeResults {
		if res == result {
			r.full[i].Inc()
			return
		}
	}
}
