package transport

import "github.com/prometheus/client_golang/prometheus"

// Reasons a connection or frame was refused, the values of the reason
// label of karuta_cluster_data_rejected_total.
const (
	reasonNotMember     = "not_member"      // a certificate naming no current member
	reasonPendingLimit  = "pending_limit"   // closed to make room: too many connections before authentication
	reasonSourceLimit   = "source_limit"    // closed to make room: too many from one unknown source
	reasonSilent        = "silent"          // sent nothing within the handshake timeout
	reasonHandshake     = "handshake"       // TLS, label, key or certificate refused
	reasonTimeout       = "timeout"         // the handshake did not finish in time
	reasonSessionLimit  = "session_limit"   // the peer has too many sessions
	reasonFrameTooLarge = "frame_too_large" // a frame over MaxFrame
	reasonBadFrame      = "bad_frame"       // a frame that does not parse
)

// Reasons this node's own connections to a node failed, the values of
// the reason label of karuta_cluster_data_dial_failures_total.
const (
	dialUnreachable = "unreachable" // no TCP connection
	dialRefused     = "refused"     // the node closed it during the handshake
	dialHandshake   = "handshake"   // TLS, label, key, proof or certificate refused, on either side
	dialTimeout     = "timeout"     // the handshake did not finish in time
)

// tcpMetrics count what the data channel refuses, so every drop shows.
type tcpMetrics struct {
	rejected   *prometheus.CounterVec
	dialFailed *prometheus.CounterVec
	pending    prometheus.Gauge
	sessions   prometheus.Gauge
}

func newTCPMetrics(reg prometheus.Registerer) *tcpMetrics {
	const ns, sub = "karuta", "cluster"
	m := &tcpMetrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "data_rejected_total",
			Help: "Data channel connections and frames refused, by reason: not_member, pending_limit, source_limit, silent, handshake, timeout, session_limit, frame_too_large, bad_frame.",
		}, []string{"reason"}),
		dialFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "data_dial_failures_total",
			Help: "This node's data channel connections to other nodes that failed, by reason: unreachable, refused (closed by the node during the handshake), handshake (keys, label or certificate refused), timeout.",
		}, []string{"reason"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "data_handshakes_pending",
			Help: "Data channel connections accepted and not yet authenticated.",
		}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "data_sessions",
			Help: "Authenticated data channel connections, both directions.",
		}),
	}
	for _, r := range []string{reasonNotMember, reasonPendingLimit, reasonSourceLimit, reasonSilent, reasonHandshake, reasonTimeout, reasonSessionLimit, reasonFrameTooLarge, reasonBadFrame} {
		m.rejected.WithLabelValues(r)
	}
	for _, r := range []string{dialUnreachable, dialRefused, dialHandshake, dialTimeout} {
		m.dialFailed.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.rejected, m.dialFailed, m.pending, m.sessions)
	}
	return m
}
