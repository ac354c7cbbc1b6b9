package eventually

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// recorder is a TB that keeps the failure instead of ending the test.
type recorder struct {
	failed bool
	msg    string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = fmt.Sprintf(format, args...)
}

func TestTrue(t *testing.T) {
	for _, tc := range []struct {
		name     string
		trueFrom int32 // the call from which cond holds; 0 never
		wantFail bool
	}{
		{"holds at once", 1, false},
		{"holds after a few polls", 5, false},
		{"never holds", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls atomic.Int32
				var r recorder
				start := time.Now()
				True(&r, 3*time.Second, "the thing", func() bool {
					n := calls.Add(1)
					return tc.trueFrom != 0 && n >= tc.trueFrom
				})
				waited := time.Since(start)
				if r.failed != tc.wantFail {
					t.Fatalf("failed = %v (%q), want %v", r.failed, r.msg, tc.wantFail)
				}
				if !tc.wantFail {
					if got := calls.Load(); got != tc.trueFrom {
						t.Errorf("cond called %d times, want %d: polling must stop once it holds", got, tc.trueFrom)
					}
					return
				}
				if r.msg != "the thing: not within 3s" {
					t.Errorf("failure = %q, want it to name what was awaited and for how long", r.msg)
				}
				if waited != 3*time.Second {
					t.Errorf("gave up after %s, want exactly the 3s deadline", waited)
				}
				if calls.Load() < 10 {
					t.Errorf("cond called only %d times in 3s; want it polled until the deadline", calls.Load())
				}
			})
		})
	}
}

func TestNoErrorReportsLastError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var r recorder
		n := 0
		NoError(&r, time.Second, "peers visible", func() error {
			n++
			return errors.New("attempt " + fmt.Sprint(n))
		})
		if !r.failed || !strings.HasPrefix(r.msg, "peers visible: not within 1s: attempt ") || !strings.HasSuffix(r.msg, fmt.Sprint(n)) {
			t.Errorf("failure = %q after %d attempts; want the last attempt's error", r.msg, n)
		}
	})
}
