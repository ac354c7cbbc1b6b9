package ring

import (
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

func key(b byte) string {
	return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(rune('a'+b)), 32)))
}

type memberOpt func(*Config, *MembershipOptions)

func withKeys(keys ...string) memberOpt {
	return func(c *Config, _ *MembershipOptions) { c.SecretKeys = keys }
}

func withLabel(l string) memberOpt { return func(c *Config, _ *MembershipOptions) { c.Label = l } }

func withBind(addr string) memberOpt { return func(c *Config, _ *MembershipOptions) { c.Bind = addr } }

// onNet gossips over the in-memory network n instead of loopback sockets.
func onNet(n *gossipNet) memberOpt {
	return func(_ *Config, o *MembershipOptions) { o.Transport = n.newTransport() }
}

func withDC(dc, zone string) memberOpt {
	return func(_ *Config, o *MembershipOptions) { o.Self.Datacenter, o.Self.Zone = dc, zone }
}

func startMember(t *testing.T, name string, join []string, opts ...memberOpt) *Membership {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Bind = "127.0.0.1:0"
	cfg.Profile = "local"
	cfg.JoinRetry = 200 * time.Millisecond
	cfg.Join = join
	mo := MembershipOptions{
		Self:       NodeInfo{Member: Member{Name: name}, DataAddr: "127.0.0.1:1" + name[len(name)-1:], Boot: "boot-" + name},
		VNodes:     64,
		Registerer: prometheus.NewRegistry(),
		Log:        zaptest.NewLogger(t).Named(name),
	}
	for _, o := range opts {
		o(&cfg, &mo)
	}
	m, err := NewMembership(cfg, mo)
	if err != nil {
		t.Fatalf("NewMembership(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func memberNames(v *View) string {
	var names []string
	for _, m := range v.Members() {
		names = append(names, m.Name)
	}
	return strings.Join(names, ",")
}

func TestMembershipFormsCluster(t *testing.T) {
	a := startMember(t, "node-a", nil, withDC("dc1", "z1"))
	if v := a.View(); memberNames(v) != "node-a" || v.Self != 0 {
		t.Fatalf("first view = %q self %d; want only node-a as self", memberNames(v), v.Self)
	}
	b := startMember(t, "node-b", []string{a.Addr()}, withDC("dc1", "z2"))
	c := startMember(t, "node-c", []string{b.Addr()}, withDC("dc2", "z1"))
	for _, m := range []*Membership{a, b, c} {
		eventually.True(t, 10*time.Second, m.opts.Self.Name+" sees all three", func() bool {
			return memberNames(m.View()) == "node-a,node-b,node-c"
		})
		v := m.View()
		if got := v.Members()[v.Self].Name; got != m.opts.Self.Name {
			t.Errorf("%s: view's self is %s", m.opts.Self.Name, got)
		}
		want := []NodeInfo{
			{Member{"node-a", "dc1", "z1"}, "127.0.0.1:1a", "boot-node-a"},
			{Member{"node-b", "dc1", "z2"}, "127.0.0.1:1b", "boot-node-b"},
			{Member{"node-c", "dc2", "z1"}, "127.0.0.1:1c", "boot-node-c"},
		}
		for i, w := range want {
			if v.Members()[i] != w.Member || v.DataAddrs[i] != w.DataAddr || v.Boots[i] != w.Boot {
				t.Errorf("%s: member %d = %+v at %s boot %s, want %+v", m.opts.Self.Name, i, v.Members()[i], v.DataAddrs[i], v.Boots[i], w)
			}
		}
		if v.Replicas != 2 {
			t.Errorf("%s: view replicas = %d, want 2", m.opts.Self.Name, v.Replicas)
		}
	}
	// All three agree on the owners of any swarm.
	va, vb, vc := a.View(), b.View(), c.View()
	for i := range 200 {
		ih := [20]byte{byte(i), byte(i >> 8), 7}
		oa, ob, oc := va.OwnersOf(ih, nil), vb.OwnersOf(ih, nil), vc.OwnersOf(ih, nil)
		if fmt.Sprint(oa) != fmt.Sprint(ob) || fmt.Sprint(oa) != fmt.Sprint(oc) {
			t.Fatalf("owners of %x differ: %v %v %v", ih, oa, ob, oc)
		}
	}
	if got := testutil.ToFloat64(a.members.WithLabelValues("alive")); got != 3 {
		t.Errorf("karuta_cluster_members{state=alive} = %v, want 3", got)
	}
}

// The members gossip over an in-memory network on synctest's fake clock,
// so waiting out failure detection (up to 18 s of suspicion with two
// members left) costs no wall time.
func TestMembershipLeaveAndFailure(t *testing.T) {
	synctest.Test(t, testMembershipLeaveAndFailure)
}

func testMembershipLeaveAndFailure(t *testing.T) {
	gn := newGossipNet(t)
	a := startMember(t, "node-a", nil, onNet(gn))
	b := startMember(t, "node-b", []string{a.Addr()}, onNet(gn))
	c := startMember(t, "node-c", []string{a.Addr()}, onNet(gn))
	eventually.True(t, 10*time.Second, "three members", func() bool { return memberNames(a.View()) == "node-a,node-b,node-c" })
	epoch := a.View().Epoch

	select {
	case <-a.Changed():
	default:
		t.Fatal("Changed was not signalled for the new members")
	}

	states := func() map[string]string {
		out := map[string]string{}
		for _, s := range a.Members() {
			out[s.Name] = string(s.State)
		}
		return out
	}

	// A leaving node drops out of every view, its own included, while it
	// still gossips, so its swarms can be handed over.
	if err := c.StartLeaving(2 * time.Second); err != nil {
		t.Fatalf("StartLeaving: %v", err)
	}
	eventually.True(t, 5*time.Second, "node-c out of a's view once leaving", func() bool { return memberNames(a.View()) == "node-a,node-b" })
	eventually.True(t, 5*time.Second, "node-c out of its own view", func() bool { return c.View().Self == -1 && memberNames(c.View()) == "node-a,node-b" })
	if a.View().Epoch <= epoch {
		t.Errorf("epoch did not advance: %d then %d", epoch, a.View().Epoch)
	}
	if got := states()["node-c"]; got != "leaving" {
		t.Errorf("node-c state = %q while handing over, want leaving", got)
	}
	if err := c.Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	_ = c.Close()
	eventually.True(t, 5*time.Second, "node-c marked left", func() bool { return states()["node-c"] == "left" })

	_ = b.Close() // a crash: no leave message
	// 18 s of suspicion with nobody to confirm it, the probes before it
	// and the dead member's grace in the ring: fake seconds, no wall time.
	eventually.True(t, 30*time.Second, "node-b dropped after failing", func() bool { return memberNames(a.View()) == "node-a" })
	for _, s := range a.Members() {
		if s.Name == "node-b" && s.State != "dead" {
			t.Errorf("node-b state = %q, want dead", s.State)
		}
	}
}

// A member cut off by a partition is declared dead, and once the link
// heals the reconnect loop brings it back without a restart.
func TestMembershipPartitionHeals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gn := newGossipNet(t)
		a := startMember(t, "node-a", nil, onNet(gn))
		b := startMember(t, "node-b", []string{a.Addr()}, onNet(gn))
		c := startMember(t, "node-c", []string{a.Addr()}, onNet(gn))
		for _, m := range []*Membership{a, b, c} {
			eventually.True(t, 10*time.Second, m.opts.Self.Name+" sees all three", func() bool {
				return memberNames(m.View()) == "node-a,node-b,node-c"
			})
		}
		gn.cut(c.Addr())
		for _, m := range []*Membership{a, b} {
			eventually.True(t, 30*time.Second, m.opts.Self.Name+" drops the cut-off node-c", func() bool {
				return memberNames(m.View()) == "node-a,node-b"
			})
		}
		eventually.True(t, 30*time.Second, "node-c alone on its side", func() bool { return memberNames(c.View()) == "node-c" })
		gn.heal(c.Addr())
		for _, m := range []*Membership{a, b, c} {
			eventually.True(t, 30*time.Second, m.opts.Self.Name+" sees all three after the heal", func() bool {
				return memberNames(m.View()) == "node-a,node-b,node-c"
			})
		}
	})
}

// On synctest's fake clock, so the outsiders get two seconds of retries
// to (fail to) join without the test spending them.
func TestMembershipKeysAndLabel(t *testing.T) {
	synctest.Test(t, testMembershipKeysAndLabel)
}

func testMembershipKeysAndLabel(t *testing.T) {
	gn := newGossipNet(t)
	a := startMember(t, "node-a", nil, onNet(gn), withKeys(key(1), key(2)), withLabel("prod"))
	// Rotation: b sends with key 2, which a accepts as its second key.
	b := startMember(t, "node-b", []string{a.Addr()}, onNet(gn), withKeys(key(2), key(1)), withLabel("prod"))
	eventually.True(t, 10*time.Second, "rotated keys still join", func() bool { return memberNames(a.View()) == "node-a,node-b" })

	wrongKey := startMember(t, "node-x", []string{a.Addr()}, onNet(gn), withKeys(key(3)), withLabel("prod"))
	noKey := startMember(t, "node-y", []string{a.Addr()}, onNet(gn), withLabel("prod"))
	wrongLabel := startMember(t, "node-z", []string{a.Addr()}, onNet(gn), withKeys(key(1)), withLabel("staging"))
	time.Sleep(2 * time.Second) // fake time: the outsiders' join retries run meanwhile
	for _, m := range []*Membership{a, b} {
		if got := memberNames(m.View()); got != "node-a,node-b" {
			t.Errorf("%s sees %s; outsiders must not join", m.opts.Self.Name, got)
		}
	}
	for _, m := range []*Membership{wrongKey, noKey, wrongLabel} {
		if got := memberNames(m.View()); got != m.opts.Self.Name {
			t.Errorf("%s sees %s; it must stay alone", m.opts.Self.Name, got)
		}
	}
}

// freeGossipAddr finds a loopback port free for both TCP and UDP, as
// memberlist binds both; a port free only for UDP can be another test's
// TCP listener on a busy machine.
func freeGossipAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := tl.Addr().String()
		ul, err := net.ListenPacket("udp", addr)
		_ = tl.Close()
		if err == nil {
			_ = ul.Close()
			return addr
		}
	}
	t.Fatal("no loopback port free for both TCP and UDP")
	return ""
}

func TestMembershipRetriesSeeds(t *testing.T) {
	// b starts first, with seeds that are itself (as when every node lists
	// every node) and a that is not up yet: reaching itself must not count
	// as having joined.
	addrA, addrB := freeGossipAddr(t), freeGossipAddr(t)
	// A name that resolves to several addresses (localhost: 127.0.0.1 and
	// often ::1) counts as several seeds; one answering is enough.
	_, portA, _ := net.SplitHostPort(addrA)
	logs, seen := observer.New(zap.WarnLevel)
	b := startMember(t, "node-b", []string{addrB, "localhost:" + portA}, withBind(addrB), func(_ *Config, o *MembershipOptions) {
		o.Log = zap.New(zapcore.NewTee(o.Log.Core(), logs))
	})
	eventually.True(t, 10*time.Second, "b retries the seeds twice", func() bool {
		return seen.FilterMessage("no other seed answered; retrying").Len() >= 2
	})
	if got := memberNames(b.View()); got != "node-b" {
		t.Fatalf("before the seed exists b sees %s", got)
	}
	a := startMember(t, "node-a", nil, withBind(addrA))
	eventually.True(t, 10*time.Second, "b joins once the seed is up", func() bool { return memberNames(a.View()) == "node-a,node-b" })
}

// The data address is gossiped with a wildcard host resolved to the
// address memberlist advertises.
func TestMembershipResolvesWildcardDataAddr(t *testing.T) {
	a := startMember(t, "node-a", nil, func(_ *Config, o *MembershipOptions) { o.Self.DataAddr = "0.0.0.0:7777" })
	b := startMember(t, "node-b", []string{a.Addr()})
	eventually.True(t, 10*time.Second, "b sees a", func() bool { return memberNames(b.View()) == "node-a,node-b" })
	eventually.True(t, 5*time.Second, "a's data address resolved at b", func() bool { return b.View().DataAddrs[0] == "127.0.0.1:7777" })
	if got := a.Self().DataAddr; got != "127.0.0.1:7777" {
		t.Errorf("a.Self().DataAddr = %s", got)
	}
}

func TestNewMembershipRejectsBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Bind = "127.0.0.1:0"
	cfg.Profile = "moon"
	_, err := NewMembership(cfg, MembershipOptions{Self: NodeInfo{Member: Member{Name: "x"}, DataAddr: "127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "profile") {
		t.Fatalf("NewMembership with profile moon: err = %v, want one naming profile", err)
	}
}

// A node restarted under the same name, at another address, is taken in at
// once: it gossips under a new boot, so memberlist sees a new member
// instead of an address conflict it would refuse until the old process is
// declared dead.
func TestMembershipRestartUnderSameName(t *testing.T) {
	a := startMember(t, "node-a", nil)
	b := startMember(t, "node-b", []string{a.Addr()})
	eventually.True(t, 10*time.Second, "two members", func() bool { return memberNames(a.View()) == "node-a,node-b" })
	_ = b.Close() // a crash: no leave
	restarted := func(_ *Config, o *MembershipOptions) { o.Self.Boot, o.Self.DataAddr = "boot-node-b-2", "127.0.0.1:2b" }
	startMember(t, "node-b", []string{a.Addr()}, restarted)
	eventually.True(t, 3*time.Second, "a routes to the restarted node-b", func() bool {
		v := a.View()
		i := v.Index("node-b")
		return memberNames(v) == "node-a,node-b" && v.Boots[i] == "boot-node-b-2" && v.DataAddrs[i] == "127.0.0.1:2b"
	})
}

// Two live processes configured with one name: placement keeps the later
// boot, and the earlier process knows it is not a member (its view has no
// Self), rather than owning swarms nobody routes to it.
func TestMembershipSharedName(t *testing.T) {
	first := startMember(t, "node-a", nil)
	later := func(_ *Config, o *MembershipOptions) { o.Self.Boot, o.Self.DataAddr = "boot-node-a-2", "127.0.0.1:2a" }
	second := startMember(t, "node-a", []string{first.Addr()}, later)
	eventually.True(t, 10*time.Second, "both see the later process as node-a", func() bool {
		for _, m := range []*Membership{first, second} {
			v := m.View()
			if memberNames(v) != "node-a" || v.Boots[0] != "boot-node-a-2" {
				return false
			}
		}
		return true
	})
	if s := first.View().Self; s != -1 {
		t.Errorf("the earlier process's view has Self %d; want -1, it is not the member named node-a", s)
	}
	if s := second.View().Self; s != 0 {
		t.Errorf("the later process's view has Self %d; want 0", s)
	}
}

func TestNewestBoots(t *testing.T) {
	in := []NodeInfo{
		{Member: Member{Name: "x"}, Boot: "0001"},
		{Member: Member{Name: "y"}, Boot: "0005"},
		{Member: Member{Name: "x"}, Boot: "0003"},
		{Member: Member{Name: "x"}, Boot: "0002"},
	}
	got := newestBoots(in)
	if len(got) != 2 || got[0].Name != "x" || got[0].Boot != "0003" || got[1].Name != "y" {
		t.Errorf("newestBoots = %+v; want x@0003 and y@0005", got)
	}
}

// A member declared dead stays in the ring for deadGrace, so a verdict
// that is refuted at once (a node back from a partition spreading its
// stale ones) moves no swarm; a real failure leaves the ring after it.
func TestDeadMemberGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := startMember(t, "node-a", nil, onNet(newGossipNet(t)))
		b := NodeInfo{Member: Member{Name: "node-b"}, DataAddr: "127.0.0.1:1b", Boot: "boot-node-b"}
		set := func(state State, since time.Time) {
			m.mu.Lock()
			m.known["node-b@boot-node-b"] = &MemberStatus{NodeInfo: b, State: state, Since: since}
			m.mu.Unlock()
			if err := m.publish(); err != nil {
				t.Fatal(err)
			}
		}
		if m.deadGrace != 500*time.Millisecond {
			t.Fatalf("deadGrace with the local profile = %s, want 5 gossip rounds (500ms)", m.deadGrace)
		}
		set(StateAlive, time.Now())
		if got := memberNames(m.View()); got != "node-a,node-b" {
			t.Fatalf("view %q, want both", got)
		}
		set(StateDead, time.Now())
		if got := memberNames(m.View()); got != "node-a,node-b" {
			t.Errorf("just declared dead: view %q, want node-b kept for its grace", got)
		}
		if left := m.graceLeft(); left != m.deadGrace {
			t.Errorf("grace left %s, want %s", left, m.deadGrace)
		}
		set(StateAlive, time.Now()) // refuted
		if got := memberNames(m.View()); got != "node-a,node-b" {
			t.Errorf("refuted: view %q, want both", got)
		}
		set(StateDead, time.Now())
		m.markDirty() // as the event delegate does; the loop publishes again when the grace ends
		time.Sleep(m.deadGrace)
		eventually.True(t, time.Second, "node-b leaves the ring once its grace is over", func() bool {
			return memberNames(m.View()) == "node-a"
		})
		set(StateDead, time.Now()) // not in the view: the grace does not bring it back
		if got := memberNames(m.View()); got != "node-a" {
			t.Errorf("dead and out of the ring: view %q, want node-a alone", got)
		}
	})
}
