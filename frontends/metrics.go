// Package frontends holds what the HTTP and UDP frontends share: the request
// metrics both report under one set of names.
package frontends

import (
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// SourcePrefix6 is the IPv6 prefix the frontends' per-source limits count
// as one source: a subscriber is given at least a /64, so an address of its
// own per request or connection would otherwise escape the limit.
const SourcePrefix6 = 64

// Source is the source a client address counts as for per-source limits:
// its IPv4 address (unmapped), or its IPv6 /64.
func Source(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(SourcePrefix6) // cannot fail for an IPv6 address
		return p.Addr()
	}
	return ip
}

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
	// DropConnectRate is a UDP connect from a source over its
	// connect_rate.
	DropConnectRate = "connect_rate"
)

var dropReasons = [...]string{DropTooShort, DropTooLong, DropResponse, DropConnectRate}

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
	conns    *prometheus.GaugeVec
	refused  *prometheus.CounterVec
	full     *prometheus.CounterVec
}

// Reasons a connection-oriented frontend refuses a connection, used as
// metric labels.
const (
	// RefusedMaxConnections is a connection over the frontend's cap.
	RefusedMaxConnections = "max_connections"
	// RefusedMaxConnectionsPerIP is a connection over its source's cap.
	RefusedMaxConnectionsPerIP = "max_connections_per_ip"
)

var refusedReasons = [...]string{RefusedMaxConnections, RefusedMaxConnectionsPerIP}

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
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "connections",
			Help:      "Client connections open, by frontend.",
		}, []string{"frontend"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "connections_refused_total",
			Help:      "Client connections closed unanswered at a connection cap, by frontend and cap.",
		}, []string{"frontend", "reason"}),
		full: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta",
			Subsystem: "frontend",
			Name:      "full_scrapes_total",
			Help:      "Scrapes of every swarm, by frontend and result: ok, disabled, rate_limited, refused (by a hook), error.",
		}, []string{"frontend", "result"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.dropped, m.conns, m.refused, m.full} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Recorder is the set of metric children of one frontend, resolved up front
// so that recording a request allocates nothing.
type Recorder struct {
	byAction [4]actionRecorder                          // indexed like actions
	dropped  [len(dropReasons)]prometheus.Counter       // indexed like dropReasons
	full     [len(fullScrapeResults)]prometheus.Counter // indexed like fullScrapeResults
	// conns and refused exist only for connection-oriented frontends
	// (ForConnections).
	conns   prometheus.Gauge
	refused [len(refusedReasons)]prometheus.Counter // indexed like refusedReasons
}

type actionRecorder struct {
	ok, clientErr, err prometheus.Counter
	duration           prometheus.Observer
}

// results lists the results each action can have, indexed like actions:
// a connect is answered or refused as malformed, never failed by the
// tracker, and a request for no known action is always the client's
// error. Series for the others would never move, so they do not exist.
var results = [len(actions)][]string{
	{ResultOK, ResultClientError},
	{ResultOK, ResultClientError, ResultError},
	{ResultOK, ResultClientError, ResultError},
	{ResultClientError},
}

// For returns the recorder for a datagram frontend ("udp"): every action,
// and every reason to drop a datagram unanswered.
func (m *Metrics) For(frontend string) *Recorder {
	r := m.recorder(frontend, actions[:])
	for i, reason := range dropReasons {
		r.dropped[i] = m.dropped.WithLabelValues(frontend, reason)
	}
	return r
}

// ForConnections returns the recorder for a frontend that serves
// connections ("http"): announces, scrapes and requests for neither (a
// connection-oriented tracker has no connect), open and refused
// connections and full scrapes. It drops no request unanswered: what it
// refuses, it refuses as a whole connection.
func (m *Metrics) ForConnections(frontend string) *Recorder {
	r := m.recorder(frontend, actions[1:])
	r.conns = m.conns.WithLabelValues(frontend)
	for i, reason := range refusedReasons {
		r.refused[i] = m.refused.WithLabelValues(frontend, reason)
	}
	// Only a connection-oriented frontend (HTTP) answers full scrapes.
	for i, res := range fullScrapeResults {
		r.full[i] = m.full.WithLabelValues(frontend, res)
	}
	return r
}

// recorder resolves the request series of frontend for acts, every
// result each can have at zero.
func (m *Metrics) recorder(frontend string, acts []string) *Recorder {
	r := &Recorder{}
	for _, a := range acts {
		i := actionIndex(a)
		ar := &r.byAction[i]
		ar.duration = m.duration.WithLabelValues(frontend, a)
		for _, res := range results[i] {
			c := m.requests.WithLabelValues(frontend, a, res)
			switch res {
			case ResultOK:
				ar.ok = c
			case ResultClientError:
				ar.clientErr = c
			default:
				ar.err = c
			}
		}
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
// duration since start. A nil Recorder records nothing, and neither does
// one asked for an action or result its frontend cannot have.
func (r *Recorder) Record(action, result string, start time.Time) {
	if r == nil {
		return
	}
	ar := &r.byAction[actionIndex(action)]
	c := ar.counter(resultIndex(result))
	if c == nil {
		return // a result this frontend's action cannot have (see results)
	}
	c.Inc()
	ar.duration.Observe(time.Since(start).Seconds())
}

// Tally holds the outcomes of a batch of requests until RecordTally counts
// them: a frontend answering datagrams in batches then updates each series
// once a batch rather than once a request, and reads the clock once. The
// zero value is empty. Not safe for concurrent use.
type Tally struct {
	n [len(actions)][resultKinds]uint32 // by action, then resultIndex
}

// Add counts one request of action with result.
func (t *Tally) Add(action, result string) { t.n[actionIndex(action)][resultIndex(result)]++ }

// RecordTally counts the requests of t as Record would, each with duration
// elapsed, and empties t. A nil Recorder only empties t.
func (r *Recorder) RecordTally(t *Tally, elapsed time.Duration) {
	if r != nil {
		secs := elapsed.Seconds()
		for a := range t.n {
			ar := &r.byAction[a]
			for res, n := range t.n[a] {
				c := ar.counter(res)
				if n == 0 || c == nil {
					continue
				}
				c.Add(float64(n))
				for range n {
					ar.duration.Observe(secs)
				}
			}
		}
	}
	*t = Tally{}
}

// resultKinds is the number of results; resultIndex numbers them.
const resultKinds = 3

func resultIndex(result string) int {
	switch result {
	case ResultOK:
		return 0
	case ResultClientError:
		return 1
	}
	return 2
}

// counter returns the counter of the result numbered res, nil for one the
// action cannot have.
func (ar *actionRecorder) counter(res int) prometheus.Counter {
	switch res {
	case 0:
		return ar.ok
	case 1:
		return ar.clientErr
	}
	return ar.err
}

// Drop counts one request dropped for reason, one of the Drop constants;
// other reasons are not counted, and neither is any by a recorder made by
// ForConnections. A nil Recorder records nothing.
func (r *Recorder) Drop(reason string) {
	if r == nil {
		return
	}
	for i, d := range dropReasons {
		if d == reason && r.dropped[i] != nil {
			r.dropped[i].Inc()
			return
		}
	}
}

// ConnOpened counts a connection accepted. A nil Recorder, or one made by
// For, records nothing.
func (r *Recorder) ConnOpened() {
	if r != nil && r.conns != nil {
		r.conns.Inc()
	}
}

// ConnClosed counts a connection ended after ConnOpened.
func (r *Recorder) ConnClosed() {
	if r != nil && r.conns != nil {
		r.conns.Dec()
	}
}

// RefuseConn counts a connection refused for reason, one of the Refused
// constants; other reasons are not counted.
func (r *Recorder) RefuseConn(reason string) {
	if r == nil || r.conns == nil {
		return
	}
	for i, x := range refusedReasons {
		if x == reason {
			r.refused[i].Inc()
			return
		}
	}
}

// FullScrape counts one full scrape with result, one of the FullScrape
// constants. A nil Recorder, or one made by For, records nothing.
func (r *Recorder) FullScrape(result string) {
	if r == nil || r.conns == nil {
		return
	}
	for i, res := range fullScrapeResults {
		if res == result {
			r.full[i].Inc()
			return
		}
	}
}
