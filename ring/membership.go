package ring

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// MembershipOptions are the parts of membership that do not come from the
// cluster config.
type MembershipOptions struct {
	// Self describes this node; its DataAddr is gossiped to the others.
	Self NodeInfo
	// VNodes is passed to placement; zero means DefaultVNodes.
	VNodes int
	// Transport replaces memberlist's UDP/TCP transport: node passes its
	// bounded listener on Config.Bind (transport.Gossip), and tests run
	// many members in one process on a fake clock and cut links (ring's
	// gossipNet). Nil means memberlist's own, unbounded, on Config.Bind.
	Transport memberlist.Transport
	// Registerer receives the membership metrics; nil means none.
	Registerer prometheus.Registerer
	// Log receives membership events and memberlist's own logs.
	Log *zap.Logger
}

// MemberStatus is one known node and its gossip state, for operators.
type MemberStatus struct {
	NodeInfo
	// Gossip is the node's memberlist address.
	Gossip string `json:"gossip"`
	// State is what gossip last said of the node.
	State State `json:"state"`
	// Since is when the state last changed, as this node saw it.
	Since time.Time `json:"since"`
}

// State is a member's gossip state, as operators see it.
type State string

// The states a member goes through. A node that leaves gracefully goes
// alive → leaving → left; one that stops answering goes to dead.
const (
	// StateAlive members are in the ring (once their data address is
	// known).
	StateAlive State = "alive"
	// StateLeaving members are handing their swarms over and out of the
	// ring.
	StateLeaving State = "leaving"
	// StateDead members stopped answering without saying goodbye; they
	// are asked to rejoin for a while.
	StateDead State = "dead"
	// StateLeft members left after announcing it.
	StateLeft State = "left"
)

// Membership keeps this node in the cluster through hashicorp/memberlist
// and publishes a new View whenever the set of live members changes.
// Suspect members stay in the view: moving their swarms away on a missed
// probe would cost more than the failure detector's few seconds of doubt.
// Leaving members do not: their swarms move while they can still hand them
// over.
type Membership struct {
	cfg  Config
	opts MembershipOptions
	log  *zap.Logger
	ml   *memberlist.Memberlist

	dirty   chan struct{} // a membership event happened; cap 1
	changed chan struct{} // a new view was published; cap 1
	stop    chan struct{}
	done    sync.WaitGroup

	mu    sync.Mutex
	view  *View
	known map[string]*MemberStatus
	epoch uint64

	// deadGrace is how long a member declared dead stays in the ring in
	// case the declaration is refuted; see publish.
	deadGrace time.Duration

	self      atomic.Pointer[NodeInfo] // opts.Self with its data address resolved
	leaving   atomic.Bool
	closed    atomic.Bool // Close ran; memberlist panics on a Leave after it
	mlog      *zapWriter
	closeOnce sync.Once
	leaveOnce sync.Once
	members   *prometheus.GaugeVec
}

// reconnectFor is how long a node that failed (not one that left) is
// retried, so the two sides of a long partition find each other again
// after memberlist itself has stopped gossiping to the dead.
const reconnectFor = time.Hour

// NewMembership starts gossip on cfg.Bind and, in the background, joins
// through cfg.Join, retrying with backoff until a seed answers. The first
// view holds only this node.
func NewMembership(cfg Config, opts MembershipOptions) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ring: %w", err)
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	m := &Membership{
		cfg: cfg, opts: opts, log: opts.Log,
		dirty:   make(chan struct{}, 1),
		changed: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		known:   map[string]*MemberStatus{},
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "karuta", Subsystem: "cluster", Name: "members",
			Help: "Cluster members this node knows, by gossip state.",
		}, []string{"state"}),
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(m.members); err != nil {
			return nil, fmt.Errorf("ring: register metrics: %w", err)
		}
	}
	mc, err := m.memberlistConfig()
	if err != nil {
		return nil, err
	}
	m.deadGrace = deadGraceRounds * mc.GossipInterval
	self := opts.Self
	m.self.Store(&self)
	m.known[gossipName(opts.Self)] = &MemberStatus{NodeInfo: opts.Self, State: StateAlive, Since: time.Now()}
	if err := m.publish(); err != nil {
		return nil, err
	}
	if m.ml, err = memberlist.Create(mc); err != nil {
		return nil, fmt.Errorf("ring: start gossip on %s: %w", cfg.Bind, err)
	}
	m.resolveDataAddr()
	m.done.Add(2)
	go m.rebuildLoop()
	go m.joinLoop()
	m.log.Info("gossip started", zap.String("addr", m.Addr()), zap.Strings("join", cfg.Join))
	return m, nil
}

func (m *Membership) memberlistConfig() (*memberlist.Config, error) {
	var mc *memberlist.Config
	switch m.cfg.Profile {
	case ProfileWAN:
		mc = memberlist.DefaultWANConfig()
	case ProfileLocal:
		mc = memberlist.DefaultLocalConfig()
	default:
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = gossipName(m.opts.Self)
	// memberlist spreads news (a join, a leave) a few times per member
	// and otherwise waits for the periodic full state exchange; in a small
	// cluster a member can miss it for that long and route by a stale
	// ring. More retransmits and a shorter exchange period close that gap
	// for a little more gossip traffic.
	mc.RetransmitMult = max(mc.RetransmitMult, 4)
	switch m.cfg.Profile {
	case ProfileLocal:
		mc.PushPullInterval = 2 * time.Second
	case ProfileLAN:
		mc.PushPullInterval = 15 * time.Second
	}
	host, port, err := splitHostPort(m.cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("ring: bind %q: %w", m.cfg.Bind, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	if host == "" {
		mc.BindAddr = "0.0.0.0"
	}
	// Without an explicit advertise address memberlist picks one from the
	// bind address or, for a wildcard, the first private interface.
	mc.AdvertisePort = port
	if m.cfg.Advertise != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(m.cfg.Advertise); err != nil {
			return nil, fmt.Errorf("ring: advertise %q: %w", m.cfg.Advertise, err)
		}
	}
	keys, err := m.cfg.Keys()
	if err != nil {
		return nil, fmt.Errorf("ring: %w", err)
	}
	if len(keys) > 0 {
		// The first key encrypts what this node sends; all of them decrypt,
		// so a new key can be rolled out before it becomes primary.
		if mc.Keyring, err = memberlist.NewKeyring(keys, keys[0]); err != nil {
			return nil, fmt.Errorf("ring: secret_keys: %w", err)
		}
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Label = m.cfg.Label
	mc.Transport = m.opts.Transport
	mc.Delegate = delegate{m}
	mc.Events = events{m}
	m.mlog = &zapWriter{log: m.log.Named("memberlist"), warns: ratelog.NewKeyed(10*time.Second, 256)}
	mc.Logger = log.New(m.mlog, "", 0)
	// A restarted node comes back under the same name at once instead of
	// waiting out the default reclaim time.
	mc.DeadNodeReclaimTime = time.Second
	return mc, nil
}

// resolveDataAddr replaces a wildcard host in the data address (a data
// channel bound to 0.0.0.0 or [::]) with the address memberlist advertises,
// which is what other nodes can reach. No seed has been contacted yet, so
// nearly every node learns the resolved address first.
func (m *Membership) resolveDataAddr() {
	self := *m.self.Load()
	host, port, err := net.SplitHostPort(self.DataAddr)
	if err != nil {
		return
	}
	if ip, err := netip.ParseAddr(host); host != "" && (err != nil || !ip.IsUnspecified()) {
		return
	}
	self.DataAddr = net.JoinHostPort(m.ml.LocalNode().Addr.String(), port)
	m.self.Store(&self)
	if err := m.ml.UpdateNode(time.Second); err != nil {
		m.log.Warn("cannot spread the resolved data address", zap.Error(err))
	}
	m.markDirty()
}

// Self returns this node as the others see it, its data address resolved.
func (m *Membership) Self() NodeInfo { return *m.self.Load() }

func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", ps, err)
	}
	return host, port, nil
}

// Addr is the gossip address other nodes reach this node at.
func (m *Membership) Addr() string { return m.ml.LocalNode().Address() }

// View returns the current view. It never returns nil.
func (m *Membership) View() *View {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.view
}

// Changed is signalled after a new view is published. Several changes may
// collapse into one signal; read View after it fires.
func (m *Membership) Changed() <-chan struct{} { return m.changed }

// Members returns every node this one knows, dead and left ones included,
// sorted by name.
func (m *Membership) Members() []MemberStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MemberStatus, 0, len(m.known))
	for _, s := range m.known {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int {
		if c := cmpString(a.Name, b.Name); c != 0 {
			return c
		}
		return cmpString(a.Boot, b.Boot)
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// StartLeaving marks this node as leaving in its gossiped metadata, waiting
// up to timeout for the update to spread. Every node, this one included,
// then builds its views without it, so its swarms get new owners while it
// still serves them and can hand them over. Call Leave when that is done.
func (m *Membership) StartLeaving(timeout time.Duration) error {
	if m.closed.Load() {
		return errors.New("ring: announce leaving: gossip already stopped")
	}
	if m.leaving.Swap(true) {
		return nil
	}
	err := m.ml.UpdateNode(timeout)
	m.markDirty()
	if err != nil {
		return fmt.Errorf("ring: announce leaving: %w", err)
	}
	return nil
}

// Leave tells the cluster this node is going, waiting up to timeout for the
// message to spread, and stops gossip. Other nodes drop it from their views
// at once instead of after failure detection.
func (m *Membership) Leave(timeout time.Duration) error {
	if m.closed.Load() {
		return errors.New("ring: leave: gossip already stopped")
	}
	var err error
	m.leaveOnce.Do(func() {
		m.stopLoops()
		if err = m.ml.Leave(timeout); err != nil {
			err = fmt.Errorf("ring: leave: %w", err)
		}
	})
	return err
}

// Close stops gossip without announcing a leave, as a crash would; use
// Leave first for a graceful exit. It is safe to call more than once.
func (m *Membership) Close() error {
	var err error
	m.closeOnce.Do(func() {
		m.stopLoops()
		if e := m.ml.Shutdown(); e != nil {
			err = fmt.Errorf("ring: stop gossip: %w", e)
		}
		m.mlog.closed.Store(true)
		m.closed.Store(true)
		if m.opts.Registerer != nil {
			m.opts.Registerer.Unregister(m.members)
		}
	})
	return err
}

func (m *Membership) stopLoops() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	m.done.Wait()
}

// joinLoop joins through the seeds, then keeps trying failed members so the
// two sides of a partition merge again, and every seedEvery rounds the
// seeds too, so groups that formed apart (started during a partition, or
// each joining only itself) merge as well. Joining an address that is
// already a member is a cheap state exchange, so retrying is harmless.
func (m *Membership) joinLoop() {
	defer m.done.Done()
	wait := 100 * time.Millisecond
	joined := len(m.cfg.Join) == 0
	for round := 0; ; round++ {
		targets := m.cfg.Join
		if joined {
			targets = m.failedAddrs()
			if round%seedEvery == 0 {
				targets = append(targets, m.cfg.Join...)
			}
		}
		if len(targets) > 0 {
			_, err := m.ml.Join(targets)
			// memberlist counts reaching this node's own address (listed
			// among the seeds, or a name resolving to it) as a success;
			// only another member makes a cluster.
			others := m.ml.NumMembers() - 1
			switch {
			case !joined && others > 0:
				joined = true
				m.log.Info("joined cluster", zap.Int("others", others))
			case !joined:
				m.log.Warn("no other seed answered; retrying", zap.Strings("join", targets), zap.Duration("in", wait), zap.Error(err))
			}
		}
		select {
		case <-m.stop:
			return
		case <-time.After(wait):
		}
		if !joined {
			wait = min(wait*2, m.cfg.JoinRetry)
		} else {
			wait = m.reconnectInterval()
		}
	}
}

// seedEvery is how many reconnect rounds pass between asking the seeds
// again once joined: a minute on a LAN.
const seedEvery = 6

func (m *Membership) reconnectInterval() time.Duration {
	switch m.cfg.Profile {
	case ProfileLocal:
		return time.Second
	case ProfileWAN:
		return 30 * time.Second
	}
	return 10 * time.Second
}

// failedAddrs lists the gossip addresses of members that failed recently,
// leaving out those that left on purpose.
func (m *Membership) failedAddrs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, s := range m.known {
		if s.State == StateDead && time.Since(s.Since) < reconnectFor && s.Gossip != "" {
			out = append(out, s.Gossip)
		}
	}
	return out
}

// rebuildLoop turns membership events into views. memberlist calls the
// event delegate with its node lock held, so the delegate only marks the
// membership dirty and the view is rebuilt here, where reading the member
// list is allowed.
func (m *Membership) rebuildLoop() {
	defer m.done.Done()
	var again <-chan time.Time // a dead member's grace ends
	for {
		select {
		case <-m.stop:
			return
		case <-m.dirty:
		case <-again:
		}
		again = nil
		if err := m.publish(); err != nil {
			m.log.Error("cannot build a ring view; keeping the previous one", zap.Error(err))
		}
		if wait := m.graceLeft(); wait > 0 {
			again = time.After(wait)
		}
	}
}

// deadGraceRounds is how many gossip intervals a member declared dead
// stays in the ring. A declaration can be wrong: after a partition heals,
// a node that was cut off spreads its stale verdicts about members the
// others can reach, and each of those refutes it within a few gossip
// rounds. Dropping such a member from the ring in between would move its
// swarms away and back for nothing, and for that moment the nodes that
// believed the verdict would not ask it. A real failure is acted on this
// much later (0.5 s with the local profile, 1 s lan, 2.5 s wan).
const deadGraceRounds = 5

// graceLeft is the time until the grace of the member declared dead most
// recently ends, or 0 if none is in its grace.
func (m *Membership) graceLeft() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var left time.Duration
	for _, s := range m.known {
		if s.State == StateDead {
			left = max(left, m.deadGrace-time.Since(s.Since))
		}
	}
	return left
}

// publish builds a view from the live members and publishes it when the
// set of members or their placement data changed.
//
// The members come from what the event delegate recorded, not from
// memberlist.Members: the nodes that returns are memberlist's own, and it
// rewrites their metadata under a lock the caller cannot take.
func (m *Membership) publish() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var live []NodeInfo
	for name, s := range m.known {
		switch {
		case name == gossipName(m.opts.Self):
			if !m.leaving.Load() {
				live = append(live, *m.self.Load()) // data address resolved
			}
		case s.State == StateAlive && s.DataAddr != "":
			live = append(live, s.NodeInfo)
		case s.State == StateDead && s.DataAddr != "" && time.Since(s.Since) < m.deadGrace && m.view != nil && m.inView(s.NodeInfo):
			live = append(live, s.NodeInfo) // in its grace: see deadGraceRounds
		}
	}
	live = newestBoots(live)
	m.prune(live)
	slices.SortFunc(live, func(a, b NodeInfo) int { return cmpString(a.Name, b.Name) })

	if m.view != nil && sameNodes(m.view, live) {
		m.updateGauge()
		return nil
	}
	v, err := NewView(live, m.opts.Self.Name, m.cfg.Replicas, m.cfg.placement(m.opts.VNodes), m.epoch+1)
	if err != nil {
		return err
	}
	if v.Self >= 0 && v.Boots[v.Self] != m.opts.Self.Boot {
		// Another live process has this node's name and a later boot:
		// placement knows one process per name, so this one is not a
		// member (node.name must be unique; the node reports it).
		v.Self = -1
	}
	m.epoch++
	m.view = v
	m.updateGauge()
	names := make([]string, len(live))
	for i, n := range live {
		names[i] = n.Name
	}
	m.log.Info("ring changed", zap.Uint64("epoch", v.Epoch), zap.Strings("members", names))
	select {
	case m.changed <- struct{}{}:
	default:
	}
	return nil
}

// prune forgets members that are gone for good: older boots of a name now
// alive under a newer one, and anything dead or left for over an hour.
func (m *Membership) prune(live []NodeInfo) {
	boots := make(map[string]string, len(live))
	for _, n := range live {
		boots[n.Name] = n.Boot
	}
	for key, s := range m.known {
		if s.State != StateDead && s.State != StateLeft {
			continue
		}
		if b, ok := boots[s.Name]; (ok && b > s.Boot) || time.Since(s.Since) > reconnectFor {
			delete(m.known, key)
		}
	}
}

// gossipName is the node's memberlist name: its name and boot, so that a
// node restarted under the same name (at another address, say) is a new
// member to memberlist rather than a conflict it refuses until the old
// process is declared dead.
func gossipName(n NodeInfo) string {
	if n.Boot == "" {
		return n.Name
	}
	return n.Name + "@" + n.Boot
}

// newestBoots keeps, of members sharing a name (a restart whose old
// process has not been declared gone yet), the latest boot. Boots begin
// with the start time in fixed-width hex, so the latest sorts last.
func newestBoots(live []NodeInfo) []NodeInfo {
	byName := make(map[string]int, len(live))
	out := live[:0]
	for _, n := range live {
		if i, ok := byName[n.Name]; ok {
			if n.Boot > out[i].Boot {
				out[i] = n
			}
			continue
		}
		byName[n.Name] = len(out)
		out = append(out, n)
	}
	return out
}

// inView reports whether n, boot and all, is a member of the current view.
func (m *Membership) inView(n NodeInfo) bool {
	i := m.view.Index(n.Name)
	return i >= 0 && m.view.Boots[i] == n.Boot
}

func sameNodes(v *View, live []NodeInfo) bool {
	ms := v.Members()
	if len(ms) != len(live) {
		return false
	}
	for i, n := range live {
		if ms[i] != n.Member || v.DataAddrs[i] != n.DataAddr || v.Boots[i] != n.Boot {
			return false
		}
	}
	return true
}

func (m *Membership) updateGauge() {
	counts := map[State]int{StateAlive: 0, StateLeaving: 0, StateDead: 0, StateLeft: 0}
	for _, s := range m.known {
		counts[s.State]++
	}
	for state, n := range counts {
		m.members.WithLabelValues(string(state)).Set(float64(n))
	}
}

func (m *Membership) markDirty() {
	select {
	case m.dirty <- struct{}{}:
	default:
	}
}
