package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/node/cluster"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// leaveGossipTimeout bounds each gossip step of a graceful leave: spreading
// "leaving" before the handoff and "left" after it.
const leaveGossipTimeout = 2 * time.Second

// clustered is the part of a node that exists only with cluster.bind set.
type clustered struct {
	cfg   ClusterConfig
	id    IdentityConfig
	log   *zap.Logger
	tr    *transport.TCP
	views *membershipViews
	data  *cluster.Cluster
	boot  string
	// budget bounds the cluster listeners' unauthenticated connections
	// so they never take the frontends' descriptors (fdbudget.go).
	budget descriptorBudget

	mu sync.Mutex
	m  *ring.Membership // set by start

	names nameCheck // members sharing a name; see names.go
}

// membershipViews gives the data plane a view before gossip starts (this
// node alone, owning everything) and membership's views after.
type membershipViews struct {
	m       atomic.Pointer[ring.Membership]
	alone   *ring.View
	changed chan struct{}
	stop    chan struct{}
	done    sync.WaitGroup
	// check runs after every change and every checkEvery, on the
	// follower's goroutine; it must not block.
	check func()
}

// checkEvery is how often the follower runs check without a change: a
// member joining under a name already taken does not always change the
// view.
const checkEvery = 5 * time.Second

func (v *membershipViews) View() *ring.View {
	if m := v.m.Load(); m != nil {
		return m.View()
	}
	return v.alone
}

func (v *membershipViews) Changed() <-chan struct{} { return v.changed }

// follow relays m's change signals from now on.
func (v *membershipViews) follow(m *ring.Membership) {
	v.m.Store(m)
	v.signal()
	v.done.Add(1)
	go func() {
		defer v.done.Done()
		tick := time.NewTicker(checkEvery)
		defer tick.Stop()
		for {
			select {
			case <-v.stop:
				return
			case <-m.Changed():
				v.signal()
			case <-tick.C:
			}
			if v.check != nil {
				v.check()
			}
		}
	}()
}

func (v *membershipViews) signal() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

func newClustered(cfg Config, n *Node) (*clustered, error) {
	cc := cfg.Cluster
	keys, err := cc.Keys()
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	dataBind, err := dataBindAddr(cc.Config)
	if err != nil {
		return nil, err
	}
	httpConns := 0
	if cfg.Frontends.HTTP.Addr != "" {
		httpConns = cfg.Frontends.HTTP.MaxConnections
	}
	c := &clustered{cfg: cc, id: cfg.Node, log: n.log.Named("cluster"), boot: newBoot(), budget: planDescriptors(fileLimit(), httpConns)}
	c.tr, err = transport.NewTCP(transport.TCPOptions{
		Bind:       dataBind,
		LocalAddr:  dialSource(dataBind, cc.Advertise),
		Name:       cfg.Node.Name,
		MaxPending: c.budget.data,
		Certs:      cc.TLS.Files(),
		Keys:       keys,
		Insecure:   len(keys) == 0 && !cc.TLS.Enabled(),
		Members:    dataMembers{c},
		Refused:    c.refusedFrom,
		Label:      cc.Label,
		Log:        c.log.Named("data"),
		Registerer: n.reg,
	})
	if err != nil {
		if cc.TLS.Enabled() {
			return nil, fmt.Errorf("cluster.tls: %w", err)
		}
		return nil, fmt.Errorf("cluster: data channel: %w", err)
	}
	self := ring.NodeInfo{Member: ring.Member{Name: cfg.Node.Name, Datacenter: cfg.Node.Datacenter, Zone: cfg.Node.Zone}, DataAddr: dataBind, Boot: c.boot}
	alone, err := ring.NewView([]ring.NodeInfo{self}, self.Name, cc.Replicas, cc.Placement(), 0)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c.views = &membershipViews{alone: alone, changed: make(chan struct{}, 1), stop: make(chan struct{})}
	c.views.check = func() { c.names.check(c.membership().Members(), time.Now(), c.log) }
	c.data, err = cluster.New(cc.Data, cluster.Options{Store: n.store, Transport: c.tr, Views: c.views, Registerer: n.reg, Log: c.log})
	if err != nil {
		_ = c.tr.Close()
		return nil, err
	}
	return c, nil
}

// dataBindAddr is cluster.data_bind, or bind's host with bind's port plus
// one (port 0 stays 0: any free port).
func dataBindAddr(cc ring.Config) (string, error) {
	if cc.DataBind != "" {
		return cc.DataBind, nil
	}
	host, ps, err := net.SplitHostPort(cc.Bind)
	if err != nil {
		return "", fmt.Errorf("cluster.bind: %q: %w", cc.Bind, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return "", fmt.Errorf("cluster.bind: %q: %w", cc.Bind, err)
	}
	if port != 0 {
		port++
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// dialSource is the address this node's connections to other nodes leave
// from: the listener's own host (bind) when it is bound to one, else the
// advertised gossip host when one is set and is an address of this host
// (behind NAT it is not, and the kernel must choose). Empty lets the
// kernel choose, which on a host with several addresses may be one no
// member advertises; the other side admits the node anyway (the handshake
// decides), this only keeps the source predictable for firewalls and for
// the other side's ordering of sources.
func dialSource(bind, advertise string) string {
	for _, hp := range []string{bind, advertise} {
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || ip.IsUnspecified() {
			continue
		}
		if localIP(ip) {
			return ip.Unmap().String()
		}
	}
	return ""
}

// localIP reports whether ip belongs to this host: whether a socket can
// be bound to it.
func localIP(ip netip.Addr) bool {
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		return false
	}
	_ = pc.Close()
	return true
}

// newBoot identifies this process: its start time in fixed-width hex, so a
// later boot sorts after an earlier one, and random bits for two starts
// within a clock tick.
func newBoot() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%016x%s", time.Now().UnixNano(), hex.EncodeToString(b[:]))
}

// start serves the data channel first, so the address gossiped with the
// node's metadata already answers, then joins the gossip.
func (c *clustered) start(n *Node) error {
	if err := c.data.Start(); err != nil {
		return err
	}
	budget := []zap.Field{zap.Uint64("file_limit", c.budget.limit), zap.Uint64("reserved", c.budget.reserved),
		zap.Int("data_pending", c.budget.data), zap.Int("gossip_streams", c.budget.gossip)}
	if c.budget.tight {
		c.log.Warn("the file descriptor limit leaves the cluster listeners less than their usual bounds; raise it (ulimit -n, LimitNOFILE) or lower frontends.http.max_connections", budget...)
	} else {
		c.log.Debug("cluster listeners' descriptor budget", budget...)
	}
	self := ring.NodeInfo{
		Member:   ring.Member{Name: c.id.Name, Datacenter: c.id.Datacenter, Zone: c.id.Zone},
		DataAddr: c.tr.Addr(),
		Boot:     c.boot,
	}
	gossip, err := transport.NewGossip(transport.GossipOptions{
		Bind:       c.cfg.Bind,
		LocalAddr:  dialSource(c.cfg.Bind, c.cfg.Advertise),
		KnownHost:  dataMembers{c}.HostIsMember,
		MaxStreams: c.budget.gossip,
		Log:        c.log.Named("gossip"),
		Registerer: n.reg,
	})
	if err != nil {
		return fmt.Errorf("cluster.bind: %w", err)
	}
	m, err := ring.NewMembership(c.cfg.Config, ring.MembershipOptions{Self: self, Transport: gossip, Registerer: n.reg, Log: c.log.Named("gossip")})
	if err != nil {
		_ = gossip.Shutdown()
		return err
	}
	c.mu.Lock()
	c.m = m
	c.mu.Unlock()
	c.views.follow(m)
	return nil
}

func (c *clustered) membership() *ring.Membership {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m
}

// leave hands this node's swarms to their next owners, then leaves the
// gossip and stops the data plane. Without a membership (start failed or
// never ran) it only stops.
func (c *clustered) leave(ctx context.Context) error {
	var errs []error
	if m := c.membership(); m != nil {
		start := time.Now()
		// Gossip timeouts are warnings, not failures: the view change
		// spreads anyway, and the drain below is what must complete.
		if err := m.StartLeaving(leaveGossipTimeout); err != nil {
			c.log.Warn("leaving was not confirmed by gossip in time", zap.Error(err))
		}
		if err := c.waitNotOwner(ctx); err != nil {
			errs = append(errs, err)
		} else if err := c.data.Drain(ctx); err != nil {
			errs = append(errs, err)
		}
		c.log.Info("swarms handed over", zap.Duration("took", time.Since(start)), zap.Bool("complete", len(errs) == 0))
		if err := m.Leave(leaveGossipTimeout); err != nil {
			c.log.Warn("leave was not confirmed by gossip in time", zap.Error(err))
		}
		close(c.views.stop)
		c.views.done.Wait()
		errs = append(errs, m.Close())
	}
	errs = append(errs, c.data.Close())
	return errors.Join(errs...)
}

// waitNotOwner waits for the data plane to route by a view without this
// node, so that the handoff moves everything.
func (c *clustered) waitNotOwner(ctx context.Context) error {
	for c.data.View().Self >= 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: leave: view without this node never arrived: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// ClusterStatus is what /cluster serves.
type ClusterStatus struct {
	Node string `json:"node"`
	// Health is "ok", or "degraded" when Problems lists something.
	Health string `json:"health"`
	// Problems says what keeps the cluster from acting as one tracker, as
	// this node sees it: members whose data channel fails (their writes
	// and reads do not get through, whatever gossip says) and members
	// sharing a name.
	Problems []string            `json:"problems,omitempty"`
	Members  []ring.MemberStatus `json:"members"`
	Ring     cluster.Status      `json:"ring"`
}

// Health values of ClusterStatus.
const (
	healthOK       = "ok"
	healthDegraded = "degraded"
)

func (c *clustered) status() ClusterStatus {
	st := ClusterStatus{Node: c.id.Name, Ring: c.data.Status()}
	if m := c.membership(); m != nil {
		st.Members = m.Members()
	}
	st.Health, st.Problems = c.health(st.Members)
	return st
}

// health says whether the cluster acts as one tracker, as this node sees
// it, given the gossip members, and if not, why.
func (c *clustered) health(members []ring.MemberStatus) (string, []string) {
	var problems []string
	for _, m := range c.data.FailingLinks() {
		problems = append(problems, fmt.Sprintf("data channel to %s (%s) failing: %s", m.Name, m.Data, m.LinkError))
	}
	for _, d := range sharedNames(members) {
		problems = append(problems, d.String())
	}
	if len(problems) > 0 {
		return healthDegraded, problems
	}
	return healthOK, nil
}

// degraded lists the cluster's problems in one line, or returns "" when
// there are none.
func (c *clustered) degraded() string {
	var members []ring.MemberStatus
	if m := c.membership(); m != nil {
		members = m.Members()
	}
	_, problems := c.health(members)
	return strings.Join(problems, "; ")
}

// refusedFrom tells the data plane of a connection the data channel
// refused, when the source address is the host of exactly one other
// member. Members sharing a host cannot be told apart by address, and a
// refusal from anywhere else (a port scan) must not make the node look
// degraded.
func (c *clustered) refusedFrom(ip netip.Addr, reason string, err error) {
	self := c.tr.Addr()
	from := ""
	for _, s := range (dataMembers{c}).current() {
		if s.DataAddr == self || !atHost(s, ip) {
			continue
		}
		if from != "" {
			return
		}
		from = s.DataAddr
	}
	if from != "" {
		c.data.RefusedFrom(from, fmt.Sprintf("%s: %v", reason, err))
	}
}

func (c *clustered) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(c.status())
}
