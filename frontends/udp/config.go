package udp

import (
	"fmt"
	"net"
	"strconv"
)

// Limits on the configuration.
const (
	// minKeyLen is the shortest connection ID key accepted: 128 bits, so
	// guessing the key is out of reach however many IDs an attacker sees.
	minKeyLen = 16
	// maxReaders bounds the sockets and reader goroutines; each reader owns
	// about 3 KiB of buffers per batch slot.
	maxReaders = 256
	// minReceiveBuffer and maxReceiveBuffer bound receive_buffer: less
	// than 64 KiB is smaller than any kernel's default, more than 1 GiB a
	// typo.
	minReceiveBuffer = 64 << 10
	maxReceiveBuffer = 1 << 30
	// maxBatchSize is the kernel's limit on messages per recvmmsg/sendmmsg
	// call (UIO_MAXIOV).
	maxBatchSize = 1024
	// maxConnectSources bounds the connect limiter's table: under 100
	// bytes a source, so 100 MB at most.
	maxConnectSources = 1 << 20
)

// Config configures the UDP frontend, under the `frontends.udp` key.
type Config struct {
	// Addr is the UDP address to listen on; empty disables the frontend. A
	// wildcard host (":6969" or "[::]:6969") serves IPv4 and IPv6 clients.
	Addr string `yaml:"addr"`
	// ConnectionIDKeys are the secrets connection IDs are signed with. The
	// first signs new IDs; all are accepted, so a key can be rotated out by
	// adding the new one first and dropping the old one five minutes later.
	// Every node of a cluster needs the same keys, because a client may
	// connect to one node and announce to another. Empty means a random key
	// made at start, which only suits a single node.
	ConnectionIDKeys []string `yaml:"connection_id_keys"`
	// Readers is the number of sockets, each with its own reader goroutine,
	// sharing the port through SO_REUSEPORT; 0 means one per CPU
	// (GOMAXPROCS). Where SO_REUSEPORT is missing, the readers share one
	// socket.
	Readers int `yaml:"readers"`
	// ReceiveBuffer is the kernel receive buffer, in bytes, each socket asks
	// for. Datagrams that arrive while the readers are busy (a GC pause, a
	// core the scheduler gave to something else) wait there; past it the
	// kernel drops them and the clients time out. 0 keeps the kernel's
	// default (about 100 KiB of data on Linux, a few milliseconds of a busy
	// tracker's traffic). Linux holds it to net.core.rmem_max unless the
	// process may raise that limit (CAP_NET_ADMIN).
	ReceiveBuffer int `yaml:"receive_buffer"`
	// BatchSize is the number of datagrams one system call reads or writes
	// (recvmmsg/sendmmsg, on Linux only). 1 uses plain reads and writes.
	BatchSize int `yaml:"batch_size"`
	// ConnectRate is how many connects a second each source address (an
	// IPv6 /64) may make, after a burst of ConnectBurst; more are dropped
	// unanswered and counted. It keeps a flood of connects, the one request
	// that needs no connection ID, from one source from crowding out other
	// clients. 0 turns the limit off.
	ConnectRate float64 `yaml:"connect_rate"`
	// ConnectBurst is how many connects a source that has been quiet may
	// make at once.
	ConnectBurst int `yaml:"connect_burst"`
	// ConnectSources bounds the sources whose connect rate is tracked;
	// past it, the ones closest to a full bucket are forgotten.
	ConnectSources int `yaml:"connect_sources"`
}

// DefaultConfig returns the configuration used when the config file says
// nothing.
func DefaultConfig() Config {
	return Config{
		Addr:           ":6969",
		ReceiveBuffer:  4 << 20,
		BatchSize:      32,
		ConnectRate:    20,
		ConnectBurst:   200,
		ConnectSources: 65536,
	}
}

// Validate reports the first bad value, naming its key relative to the
// frontend's section. An empty Addr is valid: it disables the frontend.
func (c Config) Validate() error {
	if c.Addr != "" {
		_, port, err := net.SplitHostPort(c.Addr)
		if err != nil {
			return fmt.Errorf("addr: %q is not host:port; want e.g. \":6969\" or \"[::]:6969\"", c.Addr)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return fmt.Errorf("addr: port %q in %q is not a number from 0 to 65535", port, c.Addr)
		}
	}
	if err := validateKeys(c.ConnectionIDKeys); err != nil {
		return err
	}
	if c.Readers < 0 || c.Readers > maxReaders {
		return fmt.Errorf("readers: %d is out of range; want 0 (one per CPU) to %d", c.Readers, maxReaders)
	}
	if c.ReceiveBuffer != 0 && (c.ReceiveBuffer < minReceiveBuffer || c.ReceiveBuffer > maxReceiveBuffer) {
		return fmt.Errorf("receive_buffer: %d is out of range; want 0 (the kernel's default) or %d to %d bytes", c.ReceiveBuffer, minReceiveBuffer, maxReceiveBuffer)
	}
	if c.BatchSize < 1 || c.BatchSize > maxBatchSize {
		return fmt.Errorf("batch_size: %d is out of range; want 1 to %d", c.BatchSize, maxBatchSize)
	}
	if c.ConnectRate != 0 { // 0 is no limit, and the other two keys unused
		if !(c.ConnectRate >= 0.01 && c.ConnectRate <= 1e6) {
			return fmt.Errorf("connect_rate: %v is out of range; want 0 (no limit) or 0.01 to 1000000 connects a second", c.ConnectRate)
		}
		if c.ConnectBurst < 1 || c.ConnectBurst > 1e6 {
			return fmt.Errorf("connect_burst: %d is out of range; want 1 to 1000000", c.ConnectBurst)
		}
		if c.ConnectSources < limiterShards || c.ConnectSources > maxConnectSources {
			return fmt.Errorf("connect_sources: %d is out of range; want %d to %d", c.ConnectSources, limiterShards, maxConnectSources)
		}
	}
	return nil
}

// validateKeys checks connection ID keys without ever printing them: they
// are secrets.
func validateKeys(keys []string) error {
	for i, k := range keys {
		if len(k) < minKeyLen {
			return fmt.Errorf("connection_id_keys[%d]: key is %d bytes, want at least %d", i, len(k), minKeyLen)
		}
	}
	return nil
}
