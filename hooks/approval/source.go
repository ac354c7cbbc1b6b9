package approval

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/filewatch"
)

// builder collects parsed entries into an immutable set.
type builder[S any] interface {
	// add parses one entry; the error does not repeat the entry's position.
	add(entry []byte) error
	// build returns the set and how many distinct entries it holds.
	build() (*S, int)
}

// source keeps the set built from a hook's inline list and file in force,
// and reloads it when asked or when the file changes. Lookups read the set
// through an atomic pointer, so they never wait for a load; a load builds a
// whole new set and swaps it in.
type source[S any] struct {
	cfg        Config
	newBuilder func() builder[S]
	log        *zap.Logger
	set        atomic.Pointer[S]

	mu    sync.Mutex // serialises loads
	watch *filewatch.Watcher
}

// newSource loads the list, failing if it does not load, and starts the
// file watcher when there is a file and a check interval.
func newSource[S any](cfg Config, newBuilder func() builder[S], log *zap.Logger) (*source[S], error) {
	s := &source[S]{cfg: cfg, newBuilder: newBuilder, log: log, watch: filewatch.New(cfg.File, log)}
	if err := s.load("start"); err != nil {
		return nil, err
	}
	if cfg.File != "" {
		s.watch.Start(cfg.CheckInterval, func() { _ = s.load("change") }) // logged by load
	}
	return s, nil
}

// current returns the set in force. It never blocks.
func (s *source[S]) current() *S { return s.set.Load() }

// load reads the list and swaps it in, or keeps the old one and returns
// why not. The result is logged either way; loads happen only at start,
// on SIGHUP and when the file changes, so this is not per request.
func (s *source[S]) load(trigger string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	set, n, err := s.read()
	if err != nil {
		if trigger != "start" {
			s.log.Warn("approval list not reloaded; keeping the previous one",
				zap.String("trigger", trigger), zap.String("file", s.cfg.File), zap.Error(err))
		}
		return err
	}
	s.set.Store(set)
	s.log.Info("approval list loaded", zap.String("trigger", trigger), zap.String("mode", string(s.cfg.Mode)),
		zap.String("file", s.cfg.File), zap.Int("entries", n), zap.Duration("took", time.Since(start)))
	return nil
}

// read builds a set from the inline list and the file. It records the
// file's version before reading it, even when the contents turn out bad,
// so the watcher reports a broken file once per change rather than on
// every tick, and a write that races the read triggers another load.
func (s *source[S]) read() (*S, int, error) {
	b := s.newBuilder()
	for i, e := range s.cfg.List {
		if err := b.add([]byte(e)); err != nil {
			return nil, 0, fmt.Errorf("list[%d]: %w", i, err)
		}
	}
	if s.cfg.File != "" {
		if err := s.readFile(b); err != nil {
			return nil, 0, err
		}
	}
	set, n := b.build()
	if n == 0 && s.cfg.Mode == Allow {
		return nil, 0, fmt.Errorf("file %s: no entries; allow mode would refuse everything", s.cfg.File)
	}
	return set, n, nil
}

func (s *source[S]) readFile(b builder[S]) error {
	f, err := os.Open(s.cfg.File)
	if err != nil {
		return fmt.Errorf("file %s: %w", s.cfg.File, unwrapPath(err))
	}
	defer f.Close() //nolint:errcheck // read-only: a failed close loses nothing
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("file %s: %w", s.cfg.File, unwrapPath(err))
	}
	s.watch.Seen(info)
	if g, ok := b.(interface{ grow(int) }); ok {
		g.grow(int(info.Size() / 41)) // a v1 infohash and a newline per line
	}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		e := sc.Bytes()
		if i := bytes.IndexByte(e, '#'); i >= 0 {
			e = e[:i]
		}
		e = bytes.TrimSpace(e)
		if len(e) == 0 {
			continue
		}
		if err := b.add(e); err != nil {
			return fmt.Errorf("file %s: line %d: %w", s.cfg.File, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("file %s: line %d: %w", s.cfg.File, line+1, err)
	}
	return nil
}

// unwrapPath drops the *PathError wrapper, whose text repeats the path.
func unwrapPath(err error) error {
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		return pe.Err
	}
	return err
}

// close stops the watcher and waits for it. It is idempotent.
func (s *source[S]) close() { s.watch.Close() }

// listHook is what both approval hooks share: the named hook's list source,
// reloaded on SIGHUP and closed with the hook. Each hook embeds it.
type listHook[S any] struct {
	name string
	src  *source[S]
}

// newListHook loads the list for the hook called name; see newSource.
func newListHook[S any](name string, cfg Config, newBuilder func() builder[S], log *zap.Logger) (listHook[S], error) {
	src, err := newSource(cfg, newBuilder, log)
	if err != nil {
		return listHook[S]{}, err
	}
	return listHook[S]{name: name, src: src}, nil
}

// Reload re-reads the file. On error the list in force stays.
func (l *listHook[S]) Reload() error {
	if l.src.cfg.File == "" {
		return nil
	}
	if err := l.src.load("reload"); err != nil {
		return fmt.Errorf("%s: %w", l.name, err)
	}
	return nil
}

// Close stops the file watcher and waits for it. It is safe to call more
// than once.
func (l *listHook[S]) Close() error {
	l.src.close()
	return nil
}
