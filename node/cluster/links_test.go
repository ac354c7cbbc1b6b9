package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

func TestLinkState(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name string
		l    link
		now  time.Time
		want LinkState
	}{
		{"never called", link{}, t0, LinkUnknown},
		{"answered", link{lastOK: t0}, t0.Add(time.Hour), LinkOK},
		{"one failure after an answer", link{lastOK: t0, lastFail: t0.Add(time.Second), streak: 1}, t0.Add(2 * time.Second), LinkOK},
		{"two failures, never answered", link{lastFail: t0, streak: 2}, t0, LinkUnknown},
		{"three failures in a row", link{lastOK: t0, lastFail: t0.Add(time.Second), streak: linkFailAfter}, t0.Add(2 * time.Second), LinkFailing},
		{"failing stays failing without calls", link{lastFail: t0, streak: linkFailAfter}, t0.Add(time.Hour), LinkFailing},
		{"its connection refused just now", link{lastOK: t0, refused: t0}, t0.Add(time.Second), LinkFailing},
		{"refused long ago", link{lastOK: t0, refused: t0}, t0.Add(linkRefusedFor), LinkOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.l.state(tt.now); got != tt.want {
				t.Errorf("state = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestLinkProbeDue(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name string
		l    link
		now  time.Time
		want bool
	}{
		{"never called", link{}, t0, true},
		{"one in flight", link{probing: true}, t0, false},
		{"answered a moment ago", link{lastOK: t0}, t0.Add(linkProbeIdle - time.Millisecond), false},
		{"quiet for linkProbeIdle", link{lastOK: t0}, t0.Add(linkProbeIdle), true},
		{"failed a second ago", link{lastOK: t0, lastFail: t0.Add(time.Second), streak: 1}, t0.Add(time.Second + linkProbeFailing), true},
		{"failing, probed just now", link{lastFail: t0, streak: 5}, t0.Add(linkProbeFailing / 2), false},
		{"refusing it, otherwise fine", link{lastOK: t0, refused: t0}, t0.Add(linkProbeFailing), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.l.probeDue(tt.now); got != tt.want {
				t.Errorf("probeDue = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLinkOutcome(t *testing.T) {
	unreachable := fmt.Errorf("transport: call b: %w", errors.Join(transport.ErrUnreachable, errors.New("handshake: certificate signed by unknown authority")))
	tests := []struct {
		name           string
		err, ctxErr    error
		budget         time.Duration
		failed, counts bool
	}{
		{"answered", nil, nil, time.Second, false, true},
		{"answered with an error", transport.RemoteError("not an owner"), nil, 10 * time.Second, false, true},
		{"refused handshake", unreachable, nil, 2 * time.Second, true, true},
		{"no deadline", unreachable, nil, -1, true, true},
		{"forward timed out", unreachable, context.DeadlineExceeded, 2 * time.Second, true, true},
		{"read gave up at read_timeout", unreachable, context.DeadlineExceeded, 25 * time.Millisecond, false, false},
		{"caller went away", unreachable, context.Canceled, 10 * time.Second, false, false},
		{"request too large", fmt.Errorf("x: %w", transport.ErrFrameTooLarge), nil, time.Second, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			failed, counts := linkOutcome(tt.err, tt.ctxErr, tt.budget)
			if failed != tt.failed || counts != tt.counts {
				t.Errorf("linkOutcome = failed %v, counts %v; want %v, %v", failed, counts, tt.failed, tt.counts)
			}
		})
	}
}

// memberLink returns what observer's /cluster says of member's link.
func memberLink(n *testNode, member string) (LinkState, string) {
	for _, m := range n.c.Status().Members {
		if m.Name == member {
			return m.Link, m.LinkError
		}
	}
	return "absent", ""
}

func TestLinkFailureIsReported(t *testing.T) { synctest.Test(t, testLinkFailureIsReported) }

// testLinkFailureIsReported cuts the data channel between a and c while
// membership still lists both, with no traffic at all: the probes find it,
// both ends report the link failing, not whole, and the gauge 0; b, whose
// links work, stays whole. After the heal the link works again.
func testLinkFailureIsReported(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	tc.waitSettled(all...)
	a, b, c := tc.nodes["a"], tc.nodes["b"], tc.nodes["c"]
	eventually.True(t, 10*time.Second, "every link probed and working", func() bool {
		for _, o := range all {
			for _, m := range all {
				if st, _ := memberLink(tc.nodes[o], m); o != m && st != LinkOK {
					return false
				}
			}
		}
		return true
	})
	gauge := func(n *testNode, peer string) float64 { return linkUpOf(t, n, peer) }
	if up := gauge(a, "c"); up != 1 {
		t.Errorf("a's karuta_cluster_data_link_up{peer=c} = %v before the cut, want 1", up)
	}

	tc.net.Cut("a", "c")
	start := time.Now()
	eventually.True(t, 20*time.Second, "a and c report their link failing", func() bool {
		sa, _ := memberLink(a, "c")
		sc, _ := memberLink(c, "a")
		return sa == LinkFailing && sc == LinkFailing
	})
	if took := time.Since(start); took > linkProbeIdle+linkFailAfter*linkProbeFailing+time.Second {
		t.Errorf("an idle link took %s to be reported failing", took)
	}
	if _, why := memberLink(a, "c"); !strings.Contains(why, "link cut") {
		t.Errorf("a says its link to c fails because %q; want the transport's error", why)
	}
	st := a.c.Status()
	if st.Whole || st.FailingLinks != 1 {
		t.Errorf("a's status: whole %v, failing_links %d; want false, 1", st.Whole, st.FailingLinks)
	}
	if up := gauge(a, "c"); up != 0 {
		t.Errorf("a's karuta_cluster_data_link_up{peer=c} = %v, want 0", up)
	}
	if up := gauge(a, "b"); up != 1 {
		t.Errorf("a's karuta_cluster_data_link_up{peer=b} = %v, want 1", up)
	}
	if st := b.c.Status(); !st.Whole || st.FailingLinks != 0 {
		t.Errorf("b's status: whole %v, failing_links %d; want true, 0 (its links work)", st.Whole, st.FailingLinks)
	}

	tc.net.Heal()
	eventually.True(t, 5*time.Second, "the link works again", func() bool {
		sa, _ := memberLink(a, "c")
		return sa == LinkOK && a.c.Status().Whole
	})
}

func TestRefusedConnectionsMarkTheLink(t *testing.T) {
	synctest.Test(t, testRefusedConnectionsMarkTheLink)
}

// testRefusedConnectionsMarkTheLink: when this node's data channel
// refuses a member's connections, the link fails in that direction even
// though this node's own calls to the member work, until the refusals
// stop.
func testRefusedConnectionsMarkTheLink(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	a, _ := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	eventually.True(t, 10*time.Second, "a's link to b works", func() bool {
		st, _ := memberLink(a, "b")
		return st == LinkOK
	})
	a.c.RefusedFrom("b", "handshake: bad certificate")
	st, why := memberLink(a, "b")
	if st != LinkFailing || !strings.Contains(why, "bad certificate") {
		t.Errorf("after refusing b: %s %q; want failing, naming the refusal", st, why)
	}
	time.Sleep(linkRefusedFor)
	if st, _ := memberLink(a, "b"); st != LinkOK {
		t.Errorf("%s after the refusals stopped: %s, want ok", linkRefusedFor, st)
	}
}

// linkUpOf returns n's karuta_cluster_data_link_up for peer, or -1.
func linkUpOf(t *testing.T, n *testNode, peer string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "karuta_cluster_data_link_up" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == peer {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// BenchmarkLinkCalled is what every data-channel call adds to record its
// outcome, from all cores at once over a handful of members.
func BenchmarkLinkCalled(b *testing.B) {
	var ls links
	addrs := []string{"10.0.0.1:7947", "10.0.0.2:7947", "10.0.0.3:7947", "10.0.0.4:7947"}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			ls.called(addrs[i%len(addrs)], nil, now)
			i++
		}
	})
}

// answerWith is a Transport whose every call returns err.
type answerWith struct {
	transport.Transport
	err error
}

func (a answerWith) Call(context.Context, string, transport.Request) (transport.Reply, error) {
	return nil, a.err
}

// TestWatchedTransportKeepsErrors checks that recording a call's outcome
// leaves the caller's result alone: an owner that refuses a handoff has
// answered (the link works), but the refusal must still reach the
// sender, which would otherwise drop swarms nobody took.
func TestWatchedTransportKeepsErrors(t *testing.T) {
	for _, err := range []error{
		nil,
		transport.RemoteError("cluster: not an owner; not taking swarms"),
		fmt.Errorf("call: %w", errors.Join(transport.ErrUnreachable, errors.New("refused"))),
	} {
		var ls links
		w := watchedTransport{Transport: answerWith{err: err}, links: &ls, clock: realClock{}}
		if _, got := w.Call(t.Context(), "b", &transport.FetchManyRequest{}); got != err { //nolint:errorlint // the very value the transport returned, not one wrapping it
			t.Errorf("Call returned %v; the transport said %v", got, err)
		}
	}
}
