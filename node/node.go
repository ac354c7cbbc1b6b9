// Package node wires one Karuta node together (store, hook chain,
// frontends and the operations listener) and runs its lifecycle: start,
// reload and graceful shutdown.
package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	httpfront "github.com/karuta-tracker/karuta/frontends/http"
	"github.com/karuta-tracker/karuta/frontends/udp"
	"github.com/karuta-tracker/karuta/frontends/webtorrent"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/store"
)

// Options are the parts of a node that do not come from its config file.
type Options struct {
	// Log receives the node's logs; nil means no logs.
	Log *zap.Logger
	// Level, if set, is the level of Log, so a reload can change it.
	Level *zap.AtomicLevel
	// Version is reported in karuta_build_info.
	Version string
}

// Node is one running tracker node. Its methods are safe for concurrent use.
type Node struct {
	cfg   atomic.Pointer[Config]
	opts  Options
	log   *zap.Logger
	reg   *prometheus.Registry
	store *store.Memory
	// swarms keeps the store in store.snapshot_file; nil when unset.
	swarms *swarmFile
	chain  *hooks.Chain
	http   *httpfront.Server
	udp    *udp.Server
	wt     *webtorrent.Server
	cl     *clustered // nil on a single node
	hooks  builtHooks
	ops    *http.Server
	opsLn  net.Listener
	ready  atomic.Bool

	shutdownOnce sync.Once
	shutdownErr  error
}

// New builds a node from a validated config without opening any socket.
func New(cfg Config, opts Options) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if cfg.Node.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node: no node.name and no host name: %w", err)
		}
		cfg.Node.Name = host
	}
	n := &Node{opts: opts, log: opts.Log.With(zap.String("node", cfg.Node.Name)), reg: prometheus.NewRegistry()}
	n.cfg.Store(&cfg)
	n.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "karuta", Name: "build_info",
			Help:        "Always 1; labels carry the running version.",
			ConstLabels: prometheus.Labels{"version": opts.Version},
		}, func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "karuta", Name: "ready",
			Help: "1 while the node serves clients, 0 while starting or shutting down.",
		}, func() float64 {
			if n.ready.Load() {
				return 1
			}
			return 0
		}),
	)

	if n.store, err = store.NewMemory(cfg.Store, n.reg, n.log.Named("store")); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	// From here on a failure undoes what was built the way Shutdown does,
	// through closeCore, which skips the parts not built yet.
	defer func() {
		if err != nil {
			_ = n.closeCore(context.Background())
		}
	}()
	if cfg.Store.SnapshotFile != "" {
		if n.swarms, err = newSwarmFile(cfg.Store, n.store, n.reg, n.log.Named("store")); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		n.swarms.load()
	}
	if n.hooks, err = buildHooks(cfg.Hooks, hookEnv{Log: n.log.Named("hooks"), Registerer: n.reg}); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	pre, post := n.hooks.pre, n.hooks.post
	var (
		source hooks.PeerSource = n.store
		sink   hooks.ChangeSink = n.store
	)
	if cfg.Cluster.Bind != "" {
		if n.cl, err = newClustered(cfg, n); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		source, sink = n.cl.data, n.cl.data
	}
	pre = append(pre, hooks.NewResponder(source, n.hooks.rankers...))
	post = append(post, hooks.NewSwarmWriter(sink))
	if n.chain, err = hooks.New(cfg.Tracker, pre, post, n.reg, n.log.Named("hooks")); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}

	metrics, err := frontends.NewMetrics(n.reg)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if cfg.Frontends.HTTP.Addr != "" {
		if n.http, err = httpfront.New(cfg.Frontends.HTTP, n.chain, metrics.ForConnections("http"), n.log.Named("http")); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	if cfg.Frontends.UDP.Addr != "" && cfg.Cluster.Bind != "" && len(cfg.Frontends.UDP.ConnectionIDKeys) == 0 {
		n.log.Warn("frontends.udp.connection_id_keys is empty in a cluster: a client whose announces reach another node (DNS round robin, anycast, a restart) must connect again there; give every node the same keys")
	}
	if cfg.Frontends.UDP.Addr != "" {
		if n.udp, err = udp.New(cfg.Frontends.UDP, n.chain, metrics.For("udp"), n.log.Named("udp")); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	if err := n.newWebTorrent(cfg, metrics); err != nil {
		return nil, err
	}
	return n, nil
}

// newWebTorrent builds the WebTorrent frontend when it is enabled. In a
// cluster its signals for other nodes' sockets go through the cluster.
func (n *Node) newWebTorrent(cfg Config, metrics *frontends.Metrics) error {
	if cfg.Frontends.WebTorrent.Addr == "" {
		return nil
	}
	wm, err := webtorrent.NewMetrics(n.reg)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	var relay webtorrent.Relay = webtorrent.NewLocalRelay()
	if n.cl != nil {
		relay = n.cl.data
	}
	if n.wt, err = webtorrent.New(cfg.Frontends.WebTorrent, n.chain, relay, metrics.ForConnections("webtorrent"), wm, n.log.Named("webtorrent")); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if n.cl != nil {
		n.cl.data.SetSignalSink(n.wt)
	}
	return nil
}

// Start opens the listeners and marks the node ready. On error, whatever
// was opened is closed again.
func (n *Node) Start() error {
	cfg := n.cfg.Load()
	warnInsecure(n.log, cfg)
	if cfg.Metrics.Addr != "" {
		if err := n.startOps(cfg.Metrics.Addr, cfg.Metrics.Pprof); err != nil {
			return err
		}
	}
	if n.cl != nil {
		if err := n.cl.start(n); err != nil {
			_ = n.Shutdown(context.Background())
			return fmt.Errorf("node: start cluster: %w", err)
		}
	}
	if n.http != nil {
		if err := n.http.Start(); err != nil {
			_ = n.Shutdown(context.Background())
			return fmt.Errorf("node: start http frontend: %w", err)
		}
	}
	if n.udp != nil {
		if err := n.udp.Start(); err != nil {
			_ = n.Shutdown(context.Background())
			return fmt.Errorf("node: start udp frontend: %w", err)
		}
	}
	if n.wt != nil {
		if err := n.wt.Start(); err != nil {
			_ = n.Shutdown(context.Background())
			return fmt.Errorf("node: start webtorrent frontend: %w", err)
		}
	}
	if n.swarms != nil {
		n.swarms.start()
	}
	n.ready.Store(true)
	logListeners(n.log, n.Addrs())
	n.log.Info("node started", zap.Any("addrs", n.Addrs()))
	return nil
}

// Addrs are the addresses a started node listens on; empty when disabled.
type Addrs struct {
	HTTP string `json:"http,omitempty"`
	UDP  string `json:"udp,omitempty"`
	// WebTorrent is the WebSocket listener, when enabled.
	WebTorrent string `json:"webtorrent,omitempty"`
	Metrics    string `json:"metrics,omitempty"`
	// Gossip and Data are the cluster listeners, when clustered.
	Gossip string `json:"gossip,omitempty"`
	Data   string `json:"data,omitempty"`
}

// Addrs returns the bound addresses, useful when the config asked for port 0.
func (n *Node) Addrs() Addrs {
	var a Addrs
	if n.http != nil && n.http.Addr() != nil {
		a.HTTP = n.http.Addr().String()
	}
	if n.udp != nil && n.udp.Addr() != nil {
		a.UDP = n.udp.Addr().String()
	}
	if n.wt != nil {
		a.WebTorrent = n.wt.Addr()
	}
	if n.opsLn != nil {
		a.Metrics = n.opsLn.Addr().String()
	}
	if n.cl != nil {
		if m := n.cl.membership(); m != nil {
			a.Gossip, a.Data = m.Addr(), m.Self().DataAddr
		}
	}
	return a
}

// ClusterStatus returns what /cluster serves, and false on a single node.
func (n *Node) ClusterStatus() (ClusterStatus, bool) {
	if n.cl == nil {
		return ClusterStatus{}, false
	}
	return n.cl.status(), true
}

// Registry returns the node's metrics registry.
func (n *Node) Registry() *prometheus.Registry { return n.reg }

// Shutdown stops the node gracefully: it reports not-ready, stops the
// frontends, lets the post hooks apply what the clients were already told,
// writes store.snapshot_file if set, and closes the store and the operations listener last so the drain stays
// observable. It returns the errors met but always completes. Calling it
// again returns the first call's result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.shutdownOnce.Do(func() { n.shutdownErr = n.shutdown(ctx) })
	return n.shutdownErr
}

func (n *Node) shutdown(ctx context.Context) error {
	n.ready.Store(false)
	var errs []error
	if n.http != nil {
		errs = append(errs, n.http.Shutdown(ctx))
	}
	if n.udp != nil {
		errs = append(errs, n.udp.Shutdown(ctx))
	}
	if n.wt != nil {
		errs = append(errs, n.wt.Shutdown(ctx))
	}
	// Write the swarm file once every answered announce is applied, and
	// before a clustered node hands its swarms away, so it holds what this
	// node had.
	if n.swarms != nil {
		errs = append(errs, n.chain.Close(ctx), n.swarms.close())
	}
	errs = append(errs, n.closeCore(ctx))
	if n.ops != nil {
		errs = append(errs, n.ops.Shutdown(ctx))
	}
	n.log.Info("node stopped")
	return errors.Join(errs...)
}

// closeCore applies what the post hooks still hold, hands the swarms to
// their next owners when clustered, and closes the store.
func (n *Node) closeCore(ctx context.Context) error {
	var errs []error
	if n.chain != nil {
		errs = append(errs, n.chain.Close(ctx))
	}
	if n.cl != nil {
		errs = append(errs, n.cl.leave(ctx))
	}
	errs = append(errs, n.hooks.close())
	errs = append(errs, n.store.Close())
	return errors.Join(errs...)
}

// Timeouts of the operations listener, so that a client that connects and
// stalls, or reads slowly, holds a connection for a bounded time. A
// scrape of /metrics is written in milliseconds; profiles take their
// ?seconds= first, up to opsPprofWriteTimeout less a little.
const (
	opsReadTimeout       = 5 * time.Second
	opsWriteTimeout      = 30 * time.Second
	opsPprofWriteTimeout = 2 * time.Minute
	opsIdleTimeout       = time.Minute
)

func (n *Node) startOps(addr string, pprofOn bool) error {
	tcpLn, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("node: listen metrics %s: %w", addr, err)
	}
	ln, err := newOpsListener(tcpLn, opsMaxConns, opsMaxConnsPerIP, n.reg, n.log)
	if err != nil {
		_ = tcpLn.Close()
		return fmt.Errorf("node: metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{Registry: n.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !n.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		// Ready means the node serves clients. A degraded cluster does
		// not make it unready: taking it out of rotation would not mend
		// the cluster, and when every node is degraded (a bad CA
		// everywhere) it would take the whole tracker down. It is said
		// here, in /cluster and in karuta_cluster_data_link_up.
		if n.cl != nil {
			if note := n.cl.degraded(); note != "" {
				_, _ = fmt.Fprintf(w, "ready; cluster degraded: %s\n", note)
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) {
		if n.cl == nil {
			http.Error(w, "clustering is off: cluster.bind is empty", http.StatusNotFound)
			return
		}
		n.cl.serveStatus(w, r)
	})
	writeTimeout := opsWriteTimeout
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		// A CPU profile or trace writes after its ?seconds= (30 by
		// default), which must stay below the write timeout.
		writeTimeout = opsPprofWriteTimeout
	}
	n.opsLn = ln
	n.ops = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: opsReadTimeout,
		ReadTimeout:       opsReadTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       opsIdleTimeout,
	}
	go func() {
		if err := n.ops.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("metrics listener failed", zap.Error(err))
		}
	}()
	return nil
}

// Reload applies what can change while running (log level, announce
// policy, UDP connection-id keys) and logs the sections that changed but
// need a restart. It returns an error only if applying a reloadable part
// failed; the node keeps running either way.
func (n *Node) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	old := n.cfg.Load()
	if cfg.Node.Name == "" {
		cfg.Node.Name = old.Node.Name
	}
	var errs []error
	if n.opts.Level != nil && cfg.Log.Level != old.Log.Level {
		if err := n.opts.Level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
			errs = append(errs, fmt.Errorf("log.level: %w", err))
		}
	}
	if err := n.chain.SetConfig(cfg.Tracker); err != nil {
		errs = append(errs, err)
	}
	for _, r := range n.hooks.reloaders {
		if err := r.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("hooks: %w", err))
		}
	}
	if n.udp != nil && !reflect.DeepEqual(cfg.Frontends.UDP.ConnectionIDKeys, old.Frontends.UDP.ConnectionIDKeys) {
		if err := n.udp.SetConnectionIDKeys(cfg.Frontends.UDP.ConnectionIDKeys); err != nil {
			errs = append(errs, fmt.Errorf("frontends.udp.connection_id_keys: %w", err))
		}
	}
	if n.cl != nil {
		// The files may have changed even if the config did not: SIGHUP
		// is how an operator says "the new certificates are in place".
		if err := n.cl.tr.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("cluster.tls: %w", err))
		}
	}
	if restart := needsRestart(*old, cfg); len(restart) > 0 {
		n.log.Warn("config changes that take effect only after a restart", zap.Strings("keys", restart))
		// Keep the running values of what was not applied.
		cfg = applied(*old, cfg)
	}
	n.cfg.Store(&cfg)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node: reload: %w", err)
	}
	n.log.Info("config reloaded")
	return nil
}

// needsRestart lists the config sections that differ between old and new
// but cannot be applied to a running node.
func needsRestart(old, cfg Config) []string {
	var keys []string
	diff := func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			keys = append(keys, key)
		}
	}
	diff("node", old.Node, cfg.Node)
	diff("log.format", old.Log.Format, cfg.Log.Format)
	diff("frontends.http", old.Frontends.HTTP, cfg.Frontends.HTTP)
	oldUDP, newUDP := old.Frontends.UDP, cfg.Frontends.UDP
	oldUDP.ConnectionIDKeys, newUDP.ConnectionIDKeys = nil, nil
	diff("frontends.udp", oldUDP, newUDP)
	diff("tracker.post_queue_size", old.Tracker.PostQueueSize, cfg.Tracker.PostQueueSize)
	diff("tracker.post_workers", old.Tracker.PostWorkers, cfg.Tracker.PostWorkers)
	diff("hooks", old.Hooks, cfg.Hooks)
	diff("store", old.Store, cfg.Store)
	diff("metrics", old.Metrics, cfg.Metrics)
	diff("cluster", old.Cluster, cfg.Cluster)
	return keys
}

// applied returns the config actually in force after a reload: the
// reloadable parts of cfg on top of old.
func applied(old, cfg Config) Config {
	out := old
	out.Log.Level = cfg.Log.Level
	out.Tracker = cfg.Tracker
	out.Tracker.PostQueueSize, out.Tracker.PostWorkers = old.Tracker.PostQueueSize, old.Tracker.PostWorkers
	out.Frontends.UDP.ConnectionIDKeys = cfg.Frontends.UDP.ConnectionIDKeys
	return out
}

// Config returns the configuration in force.
func (n *Node) Config() Config { return *n.cfg.Load() }
