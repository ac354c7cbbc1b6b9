package node

import (
	"errors"
	"net"
	"net/netip"

	"go.uber.org/zap"
)

// insecureCluster reports whether cfg clusters the node with nothing
// protecting the data channel: neither cluster.secret_keys nor
// cluster.tls certificates. Such a cluster takes changes from anyone who
// can reach its ports (finding 2 of issue 11), so it must be asked for
// with cluster.insecure. Every way of securing a cluster is a condition
// here.
func insecureCluster(c ClusterConfig) bool {
	return inCluster(c) && len(c.SecretKeys) == 0 && !c.TLS.Enabled()
}

// plainGossip reports whether a clustered node gossips unencrypted: with
// certificates but no keys the data channel is safe, but anyone who
// reaches the gossip port can join the membership and upset placement.
func plainGossip(c ClusterConfig) bool {
	return inCluster(c) && len(c.SecretKeys) == 0 && c.TLS.Enabled()
}

func inCluster(c ClusterConfig) bool { return c.Bind != "" || len(c.Join) > 0 }

// errInsecureCluster is what a cluster without protection and without
// cluster.insecure gets.
var errInsecureCluster = errors.New("config: cluster.secret_keys: empty, no cluster.tls certificates, and cluster.bind or cluster.join is set: " +
	"gossip would be plain and any host that reaches the ports could join and write swarms; " +
	"want the same base64 key (16, 24 or 32 bytes, e.g. from `head -c32 /dev/urandom | base64`) in cluster.secret_keys on every node " +
	"(and, better, certificates in cluster.tls: see `karuta cluster tls`), " +
	"or cluster.insecure: true to run without on purpose (a private network only)")

// checkSecure refuses an unprotected cluster unless Insecure says so.
func (c ClusterConfig) checkSecure() error {
	if insecureCluster(c) && !c.Insecure {
		return errInsecureCluster
	}
	return nil
}

// warnInsecure logs, at every start, each default the config gives up:
// an unprotected cluster, and an operations listener other hosts can
// reach (unauthenticated metrics and /cluster, and pprof if enabled).
func warnInsecure(log *zap.Logger, cfg *Config) {
	if insecureCluster(cfg.Cluster) {
		log.Warn("cluster.insecure is true and cluster.secret_keys is empty: gossip is plain and the data channel takes changes from any host that reaches it; use only on a private network")
	}
	if plainGossip(cfg.Cluster) {
		log.Warn("cluster.tls authenticates the data channel but cluster.secret_keys is empty: gossip is plain, and any host that reaches the gossip port can join the membership and disturb placement; set secret_keys too")
	}
	if cfg.Metrics.Addr == "" || loopbackAddr(cfg.Metrics.Addr) {
		return
	}
	if cfg.Metrics.Pprof {
		log.Warn("metrics.addr is reachable from other hosts and metrics.pprof is true: anyone who reaches it can read profiles and make the node spend CPU on them; restrict the port",
			zap.String("addr", cfg.Metrics.Addr))
		return
	}
	log.Warn("metrics.addr is reachable from other hosts: /metrics and /cluster answer without authentication; restrict the port to the scraper",
		zap.String("addr", cfg.Metrics.Addr))
}

// loopbackAddr reports whether the listen address addr binds only a
// loopback interface: a loopback IP or "localhost". A wildcard, another
// IP or another name can be reached from elsewhere.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
