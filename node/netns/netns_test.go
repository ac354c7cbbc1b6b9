//go:build netns && linux

package netns

import (
	"testing"
	"time"
)

// Bounds, generous for a loaded two-core machine: the local profile
// declares a node dead in 3 s with a confirmation and 18 s without one.
const (
	formWithin   = 60 * time.Second
	detectWithin = 45 * time.Second
	settleWithin = 45 * time.Second
	wholeWithin  = 30 * time.Second
	steadyFor    = 2 * time.Second // probing before and after each change
)

// cluster starts the nodes and waits until each sees all of them.
func (l *lab) cluster(nodes ...*proc) []string {
	l.t.Helper()
	var names []string
	for _, p := range nodes {
		l.start(p)
		names = append(names, p.name)
	}
	l.waitRings(formWithin, true, names, nodes...)
	l.waitTrusted(formWithin, nodes...)
	return names
}

// seed announces four peers to every swarm through the nodes in turn and
// starts the continuous probe.
func (pr *probe) seed(nodes ...*proc) {
	t := pr.l.t
	t.Helper()
	for _, p := range nodes {
		pr.join(p)
	}
	for sw := range probeSwarms {
		for k := range 4 {
			if err := pr.announce(nodes[(sw+k)%len(nodes)], sw, k%2 == 1); err != nil {
				t.Fatalf("seeding: %v", err)
			}
		}
	}
	time.Sleep(deliveryLag)
	pr.run()
	time.Sleep(steadyFor)
}

// verdict fails the test on any answer that lacked an expected peer, any
// request a serving node left unanswered, and any peer lost that was not
// in flight through a killed node.
func verdict(t *testing.T, res probeResult, lostUncertain, lostOther int) {
	t.Helper()
	t.Logf("probe: %s", res)
	t.Logf("lost: %d peers announced through a killed node within %s of the kill, %d others", lostUncertain, deliveryLag, lostOther)
	if res.fails > 0 {
		t.Errorf("answers were not whole: %s", res)
	}
	if len(res.errs) > 0 {
		t.Errorf("serving nodes left %d requests unanswered", len(res.errs))
	}
	if lostOther > 0 {
		t.Errorf("%d peers lost that every live owner should hold", lostOther)
	}
}

// TestDatacenterCutAndHeal is issue 13's report: two datacenters of two
// nodes, every swarm owned in both, the link between them cut by the
// router and healed.
func TestDatacenterCutAndHeal(t *testing.T) {
	l := newLab(t, "dc", []string{"dc1", "dc2"}, true)
	a1, a2, b1, b2 := l.addNode("a1", "dc1"), l.addNode("a2", "dc1"), l.addNode("b1", "dc2"), l.addNode("b2", "dc2")
	all := l.cluster(a1, a2, b1, b2)
	pr := newProbe(l, 2)
	pr.seed(a1, a2, b1, b2)

	cut := pr.mark("cut")
	l.cutDatacenters()
	pr.split(map[string]int{"a1": 1, "a2": 1, "b1": 2, "b2": 2})
	l.waitRings(detectWithin, false, []string{"a1", "a2"}, a1, a2)
	detA := time.Since(cut)
	pr.mark("dc1 declared dc2 dead")
	l.waitRings(detectWithin, false, []string{"b1", "b2"}, b1, b2)
	detB := time.Since(cut)
	pr.mark("dc2 declared dc1 dead")
	l.waitRings(settleWithin, true, []string{"a1", "a2"}, a1, a2)
	l.waitRings(settleWithin, true, []string{"b1", "b2"}, b1, b2)
	settled := time.Since(cut)
	time.Sleep(steadyFor)

	heal := time.Now()
	l.healDatacenters()
	pr.heal(heal)
	merged := l.waitRings(formWithin, true, all, a1, a2, b1, b2)
	whole, err := pr.waitWhole(wholeWithin)
	if err != nil {
		t.Error(err)
	}
	time.Sleep(steadyFor)
	res := pr.halt()
	lu, lo := pr.lost()
	t.Logf("REPORT datacenter cut: far side declared dead %s (dc1), %s (dc2) after the cut, handoff settled at %s; after the heal rings merged in %s, answers whole %s after the heal",
		detA.Round(time.Millisecond), detB.Round(time.Millisecond), settled.Round(time.Millisecond),
		merged.Round(time.Millisecond), whole.Round(time.Millisecond))
	verdict(t, res, lu, lo)
}
