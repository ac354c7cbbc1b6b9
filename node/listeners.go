package node

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"go.uber.org/zap"
)

// listener is one socket a node binds, named by its config key.
type listener struct {
	key, addr string
	tcp, udp  bool
}

// listeners lists the sockets cfg makes the node bind: the frontends, the
// operations listener, and when clustered the gossip (TCP and UDP) and
// the data channel.
func listeners(cfg Config) []listener {
	var out []listener
	add := func(key, addr string, tcp, udp bool) {
		if addr != "" {
			out = append(out, listener{key, addr, tcp, udp})
		}
	}
	add("frontends.http.addr", cfg.Frontends.HTTP.Addr, true, false)
	add("frontends.udp.addr", cfg.Frontends.UDP.Addr, false, true)
	add("frontends.webtorrent.addr", cfg.Frontends.WebTorrent.Addr, true, false)
	add("metrics.addr", cfg.Metrics.Addr, true, false)
	if cfg.Cluster.Bind != "" {
		add("cluster.bind", cfg.Cluster.Bind, true, true)
		if data, err := dataBindAddr(cfg.Cluster.Config); err == nil {
			key := "cluster.data_bind"
			if cfg.Cluster.DataBind == "" {
				key = "cluster.data_bind (cluster.bind's port + 1)"
			}
			add(key, data, true, false)
		}
	}
	return out
}

// checkListeners refuses two listeners of one protocol on the same port
// of overlapping addresses: the second would fail at start, blamed on
// whichever component happened to bind second, or (a UDP port taken with
// SO_REUSEPORT) share the first one's traffic. Port 0 (any free port)
// never clashes.
func checkListeners(cfg Config) error {
	ls := listeners(cfg)
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			proto := ""
			switch {
			case a.tcp && b.tcp:
				proto = "TCP"
			case a.udp && b.udp:
				proto = "UDP"
			default:
				continue
			}
			if port, clash := sameSocket(a.addr, b.addr); clash {
				return fmt.Errorf("config: %s: %q and %s %q both listen on %s port %d; give each listener its own port",
					b.key, b.addr, a.key, a.addr, proto, port)
			}
		}
	}
	return nil
}

// sameSocket reports whether listening on a and b would take the same
// port on a shared address: equal hosts, or a wildcard that covers the
// other's host. Host names other than IP literals clash only when equal.
func sameSocket(a, b string) (int, bool) {
	ha, pa, errA := splitPort(a)
	hb, pb, errB := splitPort(b)
	if errA != nil || errB != nil || pa == 0 || pa != pb {
		return 0, false
	}
	if ha == hb {
		return pa, true
	}
	ia, errA := netip.ParseAddr(ha)
	ib, errB := netip.ParseAddr(hb)
	switch {
	case ha == "" || hb == "":
		// No host: Go listens on every address of both families.
		return pa, true
	case errA != nil || errB != nil:
		return 0, false
	}
	ia, ib = ia.Unmap(), ib.Unmap()
	if ia == ib || (ia.IsUnspecified() && covers(ia, ib)) || (ib.IsUnspecified() && covers(ib, ia)) {
		return pa, true
	}
	return 0, false
}

// covers reports whether the wildcard w takes addr's port too: "::" is
// dual-stack in Go, so it covers IPv4 as well; "0.0.0.0" only IPv4.
func covers(w, addr netip.Addr) bool { return w.Is6() || addr.Is4() }

func splitPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	return host, port, err
}

// logListeners logs where each listener of a started node is bound and
// who can reach it, so the start log says plainly what the node exposes.
func logListeners(log *zap.Logger, a Addrs) {
	for _, l := range []struct{ name, addr string }{
		{"http frontend", a.HTTP},
		{"udp frontend", a.UDP},
		{"webtorrent frontend", a.WebTorrent},
		{"operations (metrics, health, /cluster; no authentication)", a.Metrics},
		{"cluster gossip", a.Gossip},
		{"cluster data channel", a.Data},
	} {
		if l.addr != "" {
			log.Info("listening", zap.String("listener", l.name), zap.String("addr", l.addr), zap.String("reachable_from", reachableFrom(l.addr)))
		}
	}
}

// reachableFrom says who can reach a socket bound to addr.
func reachableFrom(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "unknown"
	}
	if host == "" {
		return "any host: every interface"
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return "the hosts that reach " + host
	case ip.IsUnspecified():
		return "any host: every interface"
	case ip.Unmap().IsLoopback():
		return "this host only (loopback)"
	}
	return "the hosts that reach " + ip.String()
}
