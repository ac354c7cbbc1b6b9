// Package filewatch notices, by polling, that a file a hook loaded has been
// rewritten, so operators can edit allow lists and key files while a node
// runs.
package filewatch

import (
	"os"
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/hooks/ratelog"
	"go.uber.org/zap"
)

// Watcher polls one file. Whoever loads the file reports the version it
// read with Seen; the watcher calls back when the file on disk is another
// version: replaced (a rename over it), resized or touched. Polling works
// the same on every filesystem, including the bind mounts and ConfigMap
// volumes that inotify handles badly.
type Watcher struct {
	path    string
	log     *zap.Logger
	statLog *ratelog.Limiter

	mu   sync.Mutex
	seen os.FileInfo // the version last loaded; nil before the first

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// New returns a watcher for path that does not poll until Start.
func New(path string, log *zap.Logger) *Watcher {
	return &Watcher{path: path, log: log, statLog: ratelog.New(time.Minute)}
}

// Seen records the version of the file a load read. Loaders should take it
// (from the open file) before reading, even when the contents then turn out
// bad, so a broken file is reported once per change rather than on every
// tick, and a write that races the read is seen as one more change.
func (w *Watcher) Seen(info os.FileInfo) {
	w.mu.Lock()
	w.seen = info
	w.mu.Unlock()
}

// Start polls every interval and calls onChange, on the watcher's
// goroutine, whenever the file differs from the version last seen. It does
// nothing for a non-positive interval or when already started.
func (w *Watcher) Start(every time.Duration, onChange func()) {
	if every <= 0 || w.stop != nil {
		return
	}
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			if w.Changed() {
				onChange()
			}
		}
	}()
}

// Changed reports whether the file on disk is another version than the one
// last seen. A file that cannot be checked counts as unchanged, so what is
// in force stays; that is logged at most once a minute.
func (w *Watcher) Changed() bool {
	info, err := os.Stat(w.path)
	if err != nil {
		if n, ok := w.statLog.Allow(); ok {
			w.log.Warn("cannot check file; keeping what was loaded", zap.String("file", w.path), zap.Error(err), zap.Uint64("failures", n))
		}
		return false
	}
	w.mu.Lock()
	seen := w.seen
	w.mu.Unlock()
	return seen == nil || !os.SameFile(seen, info) || !seen.ModTime().Equal(info.ModTime()) || seen.Size() != info.Size()
}

// Close stops polling and waits for a callback in progress. It is safe to
// call more than once.
func (w *Watcher) Close() {
	w.once.Do(func() {
		if w.stop != nil {
			close(w.stop)
			<-w.done
		}
	})
}
