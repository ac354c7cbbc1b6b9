package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// WebRTC signaling across the cluster. A WebSocket peer is stored in its
// swarms under a WebRTC address naming the node that holds its socket
// (bittorrent.WebRTCAddr), so a node relaying an offer knows where the
// target's socket is and sends the offer there directly: one hop from the
// offerer's node to the target's, and one hop back for the answer. Swarm
// membership itself travels like any peer's (forwards to the owners,
// replicas, handoff); what is particular to WebRTC peers is that they die
// with their node, so each view change sweeps the peers of nodes that are
// no longer members out of the local store.

// NodeNumber is the number a node's sockets carry in their WebRTC
// addresses: a hash of its name and boot, so a restarted node's sockets
// are told apart from its previous run's.
func NodeNumber(name, boot string) uint32 {
	return uint32(xxhash.Sum64String(name + "\x00" + boot)) //nolint:gosec // G115: a 32-bit hash by design
}

// SignalSink receives the signals other nodes relay to this one: the
// node's WebTorrent frontend. Deliver must not block and must not keep
// the slice.
type SignalSink interface {
	Deliver(sigs []bittorrent.Signal)
}

// webRTCSweeper is a store that can drop the WebRTC peers of nodes gone
// (store.Memory).
type webRTCSweeper interface {
	DropWebRTC(gone func(node uint32) bool) int
}

const (
	// signalQueue bounds the signals waiting for one destination node.
	signalQueue = 8192
	// signalBatch is the most signals one SignalRequest carries.
	signalBatch = 256
	// signalTimeout bounds one SignalRequest's round trip. A signal later
	// than this is of no use: the browser has moved on.
	signalTimeout = 2 * time.Second
	// sweepAgain is when a view change's sweep is repeated, to catch peers
	// of a gone node that a handoff delivered after the first sweep.
	sweepAgain = 3 * time.Second
)

// signalRelay is the cluster's share of WebRTC signaling.
type signalRelay struct {
	self    uint32 // this node's number
	sink    atomic.Pointer[SignalSink]
	nodes   atomic.Pointer[nodeNumbers]
	mu      sync.Mutex
	senders map[string]*signalSender // by data address
	results *prometheus.CounterVec
	swept   prometheus.Counter
}

// nodeNumbers maps the node numbers of a view to the members' data
// addresses.
type nodeNumbers struct {
	view  *ring.View
	addrs map[uint32]string
}

func numbersOf(v *ring.View) *nodeNumbers {
	n := &nodeNumbers{view: v, addrs: make(map[uint32]string, len(v.Members()))}
	for i, m := range v.Members() {
		n.addrs[NodeNumber(m.Name, v.Boots[i])] = v.DataAddrs[i]
	}
	return n
}

type signalSender struct {
	addr string
	q    chan bittorrent.Signal
	stop chan struct{}
}

var signalResults = []string{"sent", "received", "queue_full", "unreachable", "no_node"}

func (s *signalRelay) init(v *ring.View, reg prometheus.Registerer) error {
	if v.Self >= 0 {
		s.self = NodeNumber(v.Members()[v.Self].Name, v.Boots[v.Self])
	}
	s.senders = map[string]*signalSender{}
	s.results = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "karuta", Subsystem: "cluster", Name: "signals_total",
		Help: "WebRTC signals relayed between nodes, by result: sent, received, and dropped for queue_full, unreachable or no_node (the target's node is not a member).",
	}, []string{"result"})
	for _, r := range signalResults {
		s.results.WithLabelValues(r)
	}
	s.swept = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "karuta", Subsystem: "cluster", Name: "webrtc_peers_swept_total",
		Help: "WebRTC peers removed from this node's store because the node holding their socket left the cluster.",
	})
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{s.results, s.swept} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// SetSignalSink makes sink the receiver of signals from other nodes.
// Until it is set, they are dropped as for a socket that is gone.
func (c *Cluster) SetSignalSink(sink SignalSink) { c.sig.sink.Store(&sink) }

// numbers returns the node numbers of the current view.
func (c *Cluster) numbers() *nodeNumbers {
	v := c.view.Load()
	if n := c.sig.nodes.Load(); n != nil && n.view == v {
		return n
	}
	n := numbersOf(v)
	c.sig.nodes.Store(n)
	return n
}

// Self is this node's number (NodeNumber), for webtorrent.Relay.
func (c *Cluster) Self() uint32 { return c.sig.self }

// Send queues sig for the node numbered node, for webtorrent.Relay. It
// never blocks: a full queue, or a node that is not a member, drops the
// signal and counts it.
func (c *Cluster) Send(node uint32, sig *bittorrent.Signal) {
	addr, ok := c.numbers().addrs[node]
	if !ok {
		c.sig.results.WithLabelValues("no_node").Inc()
		return
	}
	s := c.signalSender(addr)
	if s == nil {
		c.sig.results.WithLabelValues("no_node").Inc()
		return
	}
	select {
	case s.q <- *sig:
	default:
		c.sig.results.WithLabelValues("queue_full").Inc()
	}
}

func (c *Cluster) signalSender(addr string) *signalSender {
	c.sig.mu.Lock()
	defer c.sig.mu.Unlock()
	if s := c.sig.senders[addr]; s != nil {
		return s
	}
	s := &signalSender{addr: addr, q: make(chan bittorrent.Signal, signalQueue), stop: make(chan struct{})}
	if !c.goOwned(func() { c.sendSignals(s) }) {
		return nil
	}
	c.sig.senders[addr] = s
	return s
}

// sendSignals sends what is queued for one node, in batches, one request
// in flight at a time: signals queue up during a round trip and go
// together in the next.
func (c *Cluster) sendSignals(s *signalSender) {
	batch := make([]bittorrent.Signal, 0, signalBatch)
	for {
		select {
		case <-c.stop:
			return
		case <-s.stop:
			return
		case sig := <-s.q:
			batch = append(batch[:0], sig)
		}
	fill:
		for len(batch) < signalBatch {
			select {
			case sig := <-s.q:
				batch = append(batch, sig)
			default:
				break fill
			}
		}
		ctx, cancel := context.WithTimeout(c.ctx, signalTimeout)
		_, err := c.tr.Call(ctx, s.addr, &transport.SignalRequest{Signals: batch})
		cancel()
		if err != nil {
			c.sig.results.WithLabelValues("unreachable").Add(float64(len(batch)))
			if n, ok := c.unreachLog.Allow(); ok {
				c.log.Warn("WebRTC signals not delivered", zap.String("peer", s.addr), zap.Int("signals", len(batch)), zap.Error(err), zap.Uint64("since_last_log", n))
			}
		} else {
			c.sig.results.WithLabelValues("sent").Add(float64(len(batch)))
		}
		clear(batch)
	}
}

// receiveSignals hands signals from another node to the sink.
func (c *Cluster) receiveSignals(r *transport.SignalRequest) {
	c.sig.results.WithLabelValues("received").Add(float64(len(r.Signals)))
	if p := c.sig.sink.Load(); p != nil {
		(*p).Deliver(r.Signals)
	}
}

// signalLoop follows view changes: it stops the senders of nodes gone and
// sweeps their WebRTC peers out of the store, at once and again a little
// later.
func (c *Cluster) signalLoop() {
	var again <-chan time.Time
	for {
		select {
		case <-c.stop:
			return
		case <-c.viewChanged():
			again = time.After(sweepAgain)
		case <-again:
			again = nil
		}
		n := c.numbers()
		live := make(map[string]bool, len(n.addrs))
		for _, a := range n.addrs {
			live[a] = true
		}
		c.sig.mu.Lock()
		for addr, s := range c.sig.senders {
			if !live[addr] {
				close(s.stop)
				delete(c.sig.senders, addr)
			}
		}
		c.sig.mu.Unlock()
		c.sweepWebRTC(n)
	}
}

// sweepWebRTC drops the WebRTC peers whose node is not in n.
func (c *Cluster) sweepWebRTC(n *nodeNumbers) {
	sw, ok := c.store.(webRTCSweeper)
	if !ok || len(n.addrs) == 0 {
		return
	}
	removed := sw.DropWebRTC(func(node uint32) bool {
		_, member := n.addrs[node]
		return !member
	})
	if removed > 0 {
		c.sig.swept.Add(float64(removed))
		c.log.Info("dropped the WebRTC peers of nodes gone", zap.Int("peers", removed))
	}
}
