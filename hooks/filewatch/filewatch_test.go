package filewatch

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"go.uber.org/zap/zaptest"
)

func write(t *testing.T, path, data string) os.FileInfo {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestChanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "list")
	w := New(path, zaptest.NewLogger(t))
	if w.Changed() {
		t.Error("a missing file counts as changed")
	}
	info := write(t, path, "a\n")
	if !w.Changed() {
		t.Error("nothing seen yet: want changed")
	}
	w.Seen(info)
	if w.Changed() {
		t.Error("the version just seen counts as changed")
	}
	write(t, path, "a\nb\n") // resized in place
	if !w.Changed() {
		t.Error("a resized file is unchanged")
	}
	info = write(t, path, "a\nb\n")
	w.Seen(info)
	other := filepath.Join(dir, "new")
	write(t, other, "c\nd\n") // same size
	touch := info.ModTime()
	if err := os.Chtimes(other, touch, touch); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	if !w.Changed() {
		t.Error("a file replaced by rename, same size and time, is unchanged")
	}
	info, _ = os.Stat(path)
	w.Seen(info)
	later := info.ModTime().Add(time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if !w.Changed() {
		t.Error("a touched file is unchanged")
	}
}

// On synctest's fake clock, so the ticks that must not call back pass in
// no wall time and the test cannot miss them on a loaded machine.
func TestStartCallsBackAndCloseStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys")
		w := New(path, zaptest.NewLogger(t))
		w.Seen(write(t, path, "k1\n"))
		var calls atomic.Int32
		w.Start(10*time.Millisecond, func() {
			calls.Add(1)
			info, _ := os.Stat(path)
			w.Seen(info) // as a loader does
		})
		// fake: five ticks. Not 50 ms: the fifth tick would wake the
		// watcher together with this goroutine, and it could look at the
		// file between the truncate and the write below.
		time.Sleep(55 * time.Millisecond)
		if n := calls.Load(); n != 0 {
			t.Fatalf("%d callbacks for an unchanged file", n)
		}
		write(t, path, "k1\nk2\n")
		eventually.True(t, 5*time.Second, "a callback after the file changed", func() bool { return calls.Load() > 0 })
		time.Sleep(50 * time.Millisecond) // fake: five more ticks
		if n := calls.Load(); n != 1 {
			t.Errorf("%d callbacks for one change, want 1", n)
		}
		w.Close()
		w.Close()
		write(t, path, "k1\nk2\nk3\n")
		time.Sleep(50 * time.Millisecond) // fake: five ticks, had it not stopped
		if n := calls.Load(); n != 1 {
			t.Errorf("callback after Close: %d calls", n)
		}
	})
}

func TestStartWithoutIntervalDoesNothing(t *testing.T) {
	w := New(filepath.Join(t.TempDir(), "x"), zaptest.NewLogger(t))
	w.Start(0, func() { t.Error("called back without polling") })
	w.Close()
}
