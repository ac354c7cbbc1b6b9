// Package eventually waits in tests for a condition that another goroutine
// makes true, polling instead of sleeping a guessed time. It imports
// nothing of Karuta's and lives beside the other leaf packages under hooks
// (bittorrent, ratelog), so tests at every layer, store and ring included,
// can share it without an import pointing up.
package eventually

import (
	"errors"
	"time"
)

// TB is the part of testing.TB the helpers use; *testing.T, *testing.B and
// *testing.F satisfy it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// The poll interval starts short, so a condition that is nearly true costs
// little, and backs off so a slow one does not spin on a loaded machine.
const (
	firstPoll = time.Millisecond
	maxPoll   = 20 * time.Millisecond
)

// True polls cond until it returns true and fails t, naming what was
// awaited, if it still does not after within. Inside a testing/synctest
// bubble within is measured on the bubble's fake clock.
func True(t TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	NoError(t, within, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// NoError polls check until it returns nil and fails t with what and
// check's last error if it still does not after within.
func NoError(t TB, within time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	wait := firstPoll
	for {
		err := check()
		if err == nil {
			return
		}
		if !time.Now().Before(deadline) {
			if errors.Is(err, errNotYet) {
				t.Fatalf("%s: not within %s", what, within)
			} else {
				t.Fatalf("%s: not within %s: %v", what, within, err)
			}
			return
		}
		timer := time.NewTimer(min(wait, time.Until(deadline)))
		<-timer.C
		wait = min(wait*2, maxPoll)
	}
}

// errNotYet is what True's condition reports while it does not hold.
var errNotYet = errors.New("condition not met")
