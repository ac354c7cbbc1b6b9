//go:build netns && linux

package netns

import (
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Bounds, generous for a loaded two-core machine: the local profile
// declares a node dead in 3 s with a confirmation and 18 s without one.
// detectWithin bounds waiting for a failure to be declared: with the wan
// profile memberlist suspects a node for 30 s at least.
func detectWithin() time.Duration {
	if *profile == "wan" {
		return 240 * time.Second
	}
	return 45 * time.Second
}

const (
	formWithin   = 60 * time.Second
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

// readTimeout is the nodes' cluster.read_timeout.
const readTimeout = 250 * time.Millisecond

// verdict fails the test on any answer that lacked an expected peer (but
// for the rare one that took longer than readTimeout), any
// request a serving node left unanswered, and any peer lost that was not
// in flight through a killed node.
func verdict(t *testing.T, res probeResult, lostUncertain, inFlight, lostOther int) {
	t.Helper()
	t.Logf("probe: %s", res)
	t.Logf("lost: %d of the %d peers announced through a killed node within %s of the kill; %d others", lostUncertain, inFlight, deliveryLag, lostOther)
	// docs/cluster.md promises whole answers while owners answer within
	// read_timeout; an answer that waited longer was served from the last
	// copy, as documented, and happens on a machine too loaded to keep
	// the deadline. Those are allowed, but only as rare exceptions.
	if timely := res.fails - res.late; timely > 0 || res.late*100 > res.answers {
		t.Errorf("answers were not whole: %s", res)
	}
	if len(res.errs) > 0 {
		t.Errorf("serving nodes left %d requests unanswered", len(res.errs))
	}
	if lostOther > 0 {
		t.Errorf("%d peers lost that every live owner should hold", lostOther)
	}
}

// healAndFinish heals a cut with heal, waits for every ring to hold all
// members again and for answers to be whole, watches a steady while
// longer, and stops the probe: the second half of every cut-and-heal case.
// It returns how long the rings took to merge and answers to be whole
// after the heal, the probe's result and what it found lost.
func healAndFinish(t *testing.T, l *lab, pr *probe, heal func(), all []string, nodes ...*proc) (merged, whole time.Duration, res probeResult, lostUncertain, inFlight, lostOther int) {
	t.Helper()
	at := time.Now()
	heal()
	pr.heal(at)
	merged = l.waitRings(formWithin, true, all, nodes...)
	pr.ringsMerged()
	whole, err := pr.waitWhole(wholeWithin)
	if err != nil {
		t.Error(err)
	}
	time.Sleep(steadyFor)
	res = pr.halt()
	lostUncertain, inFlight, lostOther = pr.lost()
	return merged, whole, res, lostUncertain, inFlight, lostOther
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
	l.waitRings(detectWithin(), false, []string{"a1", "a2"}, a1, a2)
	detA := time.Since(cut)
	pr.mark("dc1 declared dc2 dead")
	l.waitRings(detectWithin(), false, []string{"b1", "b2"}, b1, b2)
	detB := time.Since(cut)
	pr.mark("dc2 declared dc1 dead")
	l.waitRings(settleWithin, true, []string{"a1", "a2"}, a1, a2)
	l.waitRings(settleWithin, true, []string{"b1", "b2"}, b1, b2)
	settled := time.Since(cut)
	time.Sleep(steadyFor)

	merged, whole, res, lu, lf, lo := healAndFinish(t, l, pr, l.healDatacenters, all, a1, a2, b1, b2)
	t.Logf("REPORT datacenter cut: far side declared dead %s (dc1), %s (dc2) after the cut, handoff settled at %s; after the heal rings merged in %s, answers whole %s after the heal",
		detA.Round(time.Millisecond), detB.Round(time.Millisecond), settled.Round(time.Millisecond),
		merged.Round(time.Millisecond), whole.Round(time.Millisecond))
	verdict(t, res, lu, lf, lo)
}

// TestKillNode kills one of three nodes with SIGKILL and checks every
// answer from the kill through the dead declaration and the copying of
// its swarms to new owners.
func TestKillNode(t *testing.T) {
	l := newLab(t, "kill", []string{"dc1"}, false)
	n1, n2, n3 := l.addNode("n1", "dc1"), l.addNode("n2", "dc1"), l.addNode("n3", "dc1")
	l.cluster(n1, n2, n3)
	pr := newProbe(l, 2)
	pr.seed(n1, n2, n3)

	// A burst of announces through n3 right up to the kill, so what a
	// crash loses (announces answered but not yet forwarded) is measured
	// on more than a handful.
	burst := make(chan struct{})
	var burstWG sync.WaitGroup
	burstWG.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-burst:
				return
			default:
			}
			if err := pr.announce(n3, i%probeSwarms, false); err != nil {
				return
			}
		}
	})
	time.Sleep(300 * time.Millisecond)
	kill := pr.mark("SIGKILL n3")
	pr.kill(n3, kill)
	l.kill(n3)
	close(burst)
	burstWG.Wait()
	l.waitRings(detectWithin(), false, []string{"n1", "n2"}, n1, n2)
	detect := time.Since(kill)
	pr.mark("n3 declared dead")
	l.waitRings(settleWithin, true, []string{"n1", "n2"}, n1, n2)
	settled := time.Since(kill)
	time.Sleep(steadyFor)
	res := pr.halt()
	lu, lf, lo := pr.lost()
	t.Logf("REPORT SIGKILL: n3 declared dead %s after the kill, its swarms re-replicated by %s; %d of the %d peers announced through n3 within %s before the kill lost",
		detect.Round(time.Millisecond), settled.Round(time.Millisecond), lu, lf, deliveryLag)
	verdict(t, res, lu, lf, lo)
}

// TestIsolatedNode cuts one node of four off from the others while
// clients still reach it: it keeps taking announces, and after the heal
// nothing it took and nothing the others took is lost.
func TestIsolatedNode(t *testing.T) {
	l := newLab(t, "iso", []string{"dc1"}, false)
	n1, n2, n3, n4 := l.addNode("n1", "dc1"), l.addNode("n2", "dc1"), l.addNode("n3", "dc1"), l.addNode("n4", "dc1")
	all := l.cluster(n1, n2, n3, n4)
	pr := newProbe(l, 2)
	pr.seed(n1, n2, n3, n4)

	cut := pr.mark("n4 isolated")
	l.isolate(n4)
	pr.split(map[string]int{"n4": 1})
	l.waitRings(detectWithin(), false, []string{"n1", "n2", "n3"}, n1, n2, n3)
	detOthers := time.Since(cut)
	pr.mark("n4 declared dead")
	l.waitRings(detectWithin(), false, []string{"n4"}, n4)
	detSelf := time.Since(cut)
	pr.mark("n4 declared the others dead")
	time.Sleep(steadyFor)

	merged, whole, res, lu, lf, lo := healAndFinish(t, l, pr, func() { l.rejoin(n4) }, all, n1, n2, n3, n4)
	t.Logf("REPORT isolated node: the others declared n4 dead %s after the cut, n4 them %s after; after the heal rings merged in %s, answers whole %s after the heal",
		detOthers.Round(time.Millisecond), detSelf.Round(time.Millisecond), merged.Round(time.Millisecond), whole.Round(time.Millisecond))
	verdict(t, res, lu, lf, lo)
}

// TestJoinLeaveRollingRestart grows three nodes to five, lets the fifth
// leave gracefully, then restarts the other four one at a time (SIGTERM,
// start again under the same name): nothing answered before a SIGTERM may
// be lost, and every answer stays whole throughout.
func TestJoinLeaveRollingRestart(t *testing.T) {
	l := newLab(t, "roll", []string{"dc1"}, false)
	nodes := []*proc{l.addNode("n1", "dc1"), l.addNode("n2", "dc1"), l.addNode("n3", "dc1")}
	l.cluster(nodes...)
	pr := newProbe(l, 2)
	pr.seed(nodes...)
	names := func(ps []*proc) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.name)
		}
		return out
	}
	var steps []string
	for _, name := range []string{"n4", "n5"} {
		p := l.addNode(name, "dc1")
		pr.mark("start " + name)
		l.start(p)
		nodes = append(nodes, p)
		took := l.waitRings(formWithin, true, names(nodes), nodes...)
		pr.join(p) // clients are sent to it once it has joined
		steps = append(steps, fmt.Sprintf("%s joined in %s", name, took.Round(time.Millisecond)))
		time.Sleep(steadyFor)
	}
	leaver := nodes[4]
	nodes = nodes[:4]
	pr.mark("SIGTERM n5")
	pr.leaving(leaver)
	left := l.stop(leaver)
	l.waitRings(settleWithin, true, names(nodes), nodes...)
	steps = append(steps, fmt.Sprintf("n5 left in %s", left.Round(time.Millisecond)))
	time.Sleep(steadyFor)
	for i, p := range nodes {
		rest := append(slices.Clone(nodes[:i]), nodes[i+1:]...)
		pr.mark("SIGTERM " + p.name)
		pr.leaving(p)
		left := l.stop(p)
		l.waitRings(settleWithin, true, names(rest), rest...)
		pr.mark("restart " + p.name)
		l.start(p)
		back := l.waitRings(formWithin, true, names(nodes), nodes...)
		pr.join(p)
		steps = append(steps, fmt.Sprintf("%s restarted: left in %s, back in %s", p.name, left.Round(time.Millisecond), back.Round(time.Millisecond)))
		time.Sleep(steadyFor)
	}
	res := pr.halt()
	lu, lf, lo := pr.lost()
	t.Logf("REPORT membership: %s", strings.Join(steps, "; "))
	verdict(t, res, lu, lf, lo)
}

// TestMultiHomedNodes is case 2 of issue 17 on a real network: two of
// four nodes have a second address on an interface of their own, which
// they advertise, while their route to the other nodes leaves through
// their datacenter link. n2 binds gossip to the wildcard and advertises
// its second address (its connections leave from the address it
// advertises); n3 binds gossip to its second address and its data channel
// to the wildcard, so the kernel sends its data connections from its
// link's address, which no member advertises. Every answer holds every
// peer, every forward is delivered and no read fails.
func TestMultiHomedNodes(t *testing.T) {
	l := newLab(t, "mh", []string{"dc1"}, false)
	n1, n2, n3, n4 := l.addNode("n1", "dc1"), l.addNode("n2", "dc1"), l.addNode("n3", "dc1"), l.addNode("n4", "dc1")
	l.multiHome(n2, false)
	l.multiHome(n3, true)
	nodes := []*proc{n1, n2, n3, n4}
	l.cluster(nodes...)
	pr := newProbe(l, 2)
	pr.seed(nodes...)
	time.Sleep(3 * steadyFor)
	res := pr.halt()
	lu, lf, lo := pr.lost()
	verdict(t, res, lu, lf, lo)

	// The premise: n3's data connections reach the others from its link
	// address, not the one it advertises.
	out, err := exec.Command("ip", "netns", "exec", n1.ns, "ss", "-Htn", "state", "established", fmt.Sprintf("( sport = :%d )", gossipPort+1)).CombinedOutput()
	if err != nil {
		t.Fatalf("ss in %s: %v\n%s", n1.ns, err, out)
	}
	if !strings.Contains(string(out), n3.clusterIP()+"]:") && !strings.Contains(string(out), n3.clusterIP()+":") {
		t.Errorf("no data connection from n3's link address %s at n1; n1's data connections:\n%s", n3.clusterIP(), out)
	}
	var forwarded, remote float64
	for _, p := range nodes {
		m, err := l.metrics(p)
		if err != nil {
			t.Fatal(err)
		}
		forwarded += m["karuta_cluster_forwarded_changes_total{result=\"ok\"}"]
		remote += m["karuta_cluster_reads_total{result=\"fetched\"}"] + m["karuta_cluster_reads_total{result=\"cached\"}"]
		for _, key := range []string{
			`karuta_cluster_forwarded_changes_total{result="unreachable"}`, `karuta_cluster_forwarded_changes_total{result="rejected"}`,
			`karuta_cluster_forwarded_changes_total{result="queue_full"}`, `karuta_cluster_reads_total{result="failed"}`,
			`karuta_cluster_data_rejected_total{reason="not_member"}`, `karuta_cluster_data_rejected_total{reason="handshake"}`,
			`karuta_cluster_data_rejected_total{reason="session_limit"}`,
		} {
			if m[key] != 0 {
				t.Errorf("%s: %s %v; want 0", p.name, key, m[key])
			}
		}
	}
	if forwarded == 0 || remote == 0 {
		t.Errorf("%v changes forwarded and %v reads from other nodes; the test meant both", forwarded, remote)
	}
	t.Logf("REPORT multi-homed: %v changes forwarded, %v reads answered from other nodes; probe %s", forwarded, remote, res)
}

// metrics reads p's /metrics into a map from sample (name and labels, as
// printed) to value.
func (l *lab) metrics(p *proc) (map[string]float64, error) {
	resp, err := l.http.Get("http://" + p.metricsAddr() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}
