package webtorrent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the WebTorrent frontend's own series, under
// karuta_webtorrent_; requests and connections are counted with the other
// frontends' (karuta_frontend_*, frontend="webtorrent").
type Metrics struct{ m *metrics }

type metrics struct {
	handshakes *prometheus.CounterVec
	closed     *prometheus.CounterVec
	refused    *prometheus.CounterVec
	signals    *prometheus.CounterVec
	relayed    *prometheus.CounterVec
	expired    prometheus.Counter
}

// Label values, every one of which exists at zero from the start.
var (
	handshakeResults = []string{"ok", "bad_request", "no_route", "timeout", "tls_failed"}
	refusedReasons   = []string{"message_size", "message_rate", "slow_reader", "write_timeout", "idle", "max_swarms"}
	signalKinds      = []string{"offer", "answer"}
	signalResults    = []string{
		"delivered", "over_max_offers", "over_outstanding", "no_offer", "no_socket",
		"not_in_swarm", "not_here", "bad_address",
	}
)

// NewMetrics registers the frontend's metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "webtorrent", Name: "handshakes_total",
			Help: "WebSocket upgrades, by result: ok, bad_request, no_route, timeout (half-open sockets), tls_failed.",
		}, []string{"result"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "webtorrent", Name: "sockets_closed_total",
			Help: "WebSockets closed, by reason.",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "webtorrent", Name: "limited_total",
			Help: "Limits enforced on WebSockets, by limit: message_size, message_rate, slow_reader, write_timeout, idle, max_swarms.",
		}, []string{"limit"}),
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "webtorrent", Name: "signals_total",
			Help: "WebRTC offers and answers, by kind and what became of them: delivered to a socket of this node, or dropped and why.",
		}, []string{"kind", "result"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "webtorrent", Name: "signals_relayed_total",
			Help: "WebRTC offers and answers handed to the cluster for a socket on another node, by kind.",
		}, []string{"kind"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "webtorrent", Name: "offers_expired_total",
			Help: "Offers forgotten unanswered after offer_timeout.",
		}),
	}
	for _, r := range handshakeResults {
		m.handshakes.WithLabelValues(r)
	}
	for _, r := range closeReasons {
		m.closed.WithLabelValues(r)
	}
	for _, r := range refusedReasons {
		m.refused.WithLabelValues(r)
	}
	for _, k := range signalKinds {
		m.relayed.WithLabelValues(k)
		for _, r := range signalResults {
			m.signals.WithLabelValues(k, r)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.handshakes, m.closed, m.refused, m.signals, m.relayed, m.expired} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("webtorrent: register metrics: %w", err)
			}
		}
	}
	return &Metrics{m: m}, nil
}
