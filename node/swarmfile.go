package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/store"
)

// swarmFile keeps the node's swarms in store.snapshot_file across
// restarts: loaded once in New, written every snapshot_interval by a
// goroutine that Start starts, and once more at shutdown after the last
// answered announce has been applied.
type swarmFile struct {
	path     string
	interval time.Duration
	st       *store.Memory
	log      *zap.Logger
	writes   *prometheus.CounterVec
	loads    *prometheus.CounterVec
	took     prometheus.Gauge

	mu   sync.Mutex // one write at a time
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func newSwarmFile(cfg store.Config, st *store.Memory, reg prometheus.Registerer, log *zap.Logger) (*swarmFile, error) {
	dir := filepath.Dir(cfg.SnapshotFile)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return nil, fmt.Errorf("store.snapshot_file: %q: directory %s: %w", cfg.SnapshotFile, dir, err)
	}
	f := &swarmFile{
		path: cfg.SnapshotFile, interval: cfg.SnapshotInterval, st: st, log: log,
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "store", Name: "snapshot_writes_total",
			Help: "Writes of store.snapshot_file, by result (ok, error).",
		}, []string{"result"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "store", Name: "snapshot_loads_total",
			Help: "Loads of store.snapshot_file at start, by result (ok, missing, bad).",
		}, []string{"result"}),
		took: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "karuta", Subsystem: "store", Name: "snapshot_write_seconds",
			Help: "How long the last write of store.snapshot_file took.",
		}),
		stop: make(chan struct{}),
	}
	for _, r := range []string{"ok", "error"} {
		f.writes.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "missing", "bad"} {
		f.loads.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{f.writes, f.loads, f.took} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return f, nil
}

// load fills the store from the file. A missing file is a first start; a
// bad one is logged, kept aside as PATH.bad for inspection and skipped:
// the node starts empty rather than not at all.
func (f *swarmFile) load() {
	start := time.Now()
	st, err := f.st.LoadSwarmFile(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		f.loads.WithLabelValues("missing").Inc()
		f.log.Info("no swarm file yet; starting empty", zap.String("path", f.path))
	case err != nil:
		f.loads.WithLabelValues("bad").Inc()
		bad := f.path + ".bad"
		if rerr := os.Rename(f.path, bad); rerr != nil {
			bad = ""
		}
		f.log.Error("swarm file not loaded; starting empty", zap.String("path", f.path), zap.Error(err), zap.String("kept_as", bad))
	default:
		f.loads.WithLabelValues("ok").Inc()
		f.log.Info("swarms loaded", zap.String("path", f.path), zap.Int("swarms", st.Swarms), zap.Int("peers", st.Peers),
			zap.Int("expired_peers", st.Expired), zap.Int("expired_swarms", st.ExpiredSwarms),
			zap.Time("written_at", st.WrittenAt), zap.Duration("took", time.Since(start)))
	}
}

// start writes the file every interval until close.
func (f *swarmFile) start() {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		t := time.NewTicker(f.interval)
		defer t.Stop()
		for {
			select {
			case <-f.stop:
				return
			case <-t.C:
				_ = f.save()
			}
		}
	}()
}

// save writes the file once; failures are counted and logged (at most once
// per interval, as that is how often it runs).
func (f *swarmFile) save() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()
	st, err := f.st.SaveSwarmFile(f.path)
	took := time.Since(start)
	if err != nil {
		f.writes.WithLabelValues("error").Inc()
		f.log.Error("swarm file not written", zap.String("path", f.path), zap.Error(err))
		return err
	}
	f.writes.WithLabelValues("ok").Inc()
	f.took.Set(took.Seconds())
	f.log.Debug("swarms written", zap.String("path", f.path), zap.Int("swarms", st.Swarms), zap.Int("peers", st.Peers), zap.Duration("took", took))
	return nil
}

// close stops the periodic writes and writes the file a last time.
func (f *swarmFile) close() error {
	f.once.Do(func() { close(f.stop) })
	f.wg.Wait()
	if err := f.save(); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	f.log.Info("swarms written for the next start", zap.String("path", f.path))
	return nil
}
