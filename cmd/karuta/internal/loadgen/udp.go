package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// udpDriver spreads clients over a few connected UDP sockets. Each socket
// has a reader goroutine that hands replies to the waiting client, found by
// transaction ID: the top 16 bits are the client's slot on the socket, the
// low 16 a per-client sequence number.
type udpDriver struct {
	cfg   *Config
	st    *stats
	raddr netip.AddrPort // the tracker's
	v6    bool
	socks []*udpSock
	wg    sync.WaitGroup
}

type udpSock struct {
	conn *net.UDPConn
	// slots is fixed before the reader starts.
	slots []*udpSession
}

// udpDelivery is a reply handed from a reader to its client.
type udpDelivery struct {
	r   udpReply
	err error
	at  time.Time
}

// newUDPDriver opens cfg.Workers sockets to host for clients sessions.
func newUDPDriver(host string, clients int, cfg *Config, st *stats) (*udpDriver, error) {
	raddr, err := net.ResolveUDPAddr("udp", host)
	if err != nil {
		return nil, fmt.Errorf("--url: %w", err)
	}
	ap := raddr.AddrPort()
	d := &udpDriver{cfg: cfg, st: st, raddr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), v6: raddr.IP.To4() == nil}
	for range cfg.Workers {
		conn, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			_ = d.Close()
			return nil, fmt.Errorf("udp socket to %s: %w", raddr, err)
		}
		_ = conn.SetReadBuffer(4 << 20)
		d.socks = append(d.socks, &udpSock{conn: conn})
	}
	for i := range clients {
		s := d.socks[i%len(d.socks)]
		s.slots = append(s.slots, &udpSession{
			d: d, sock: s, slot: uint32(len(s.slots)),
			replies: make(chan udpDelivery, 1),
			buf:     make([]byte, 0, announceLen+74*hashLen),
		})
	}
	for _, s := range d.socks {
		d.wg.Go(func() { d.read(s) })
	}
	return d, nil
}

func (d *udpDriver) session(i int) session {
	return d.socks[i%len(d.socks)].slots[i/len(d.socks)]
}

// Close closes the sockets and waits for the readers.
func (d *udpDriver) Close() error {
	var err error
	for _, s := range d.socks {
		err = errors.Join(err, s.conn.Close())
	}
	d.wg.Wait()
	return err
}

// read hands each reply on s to the client awaiting its transaction ID.
// Replies nobody awaits (late, after a timeout, or unknown) are dropped.
func (d *udpDriver) read(s *udpSock) {
	buf := make([]byte, replyBufLen)
	for {
		n, err := s.conn.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil || n < 8 {
			// ICMP errors (ECONNREFUSED) cannot be matched to a request;
			// those requests time out.
			continue
		}
		tx := be.Uint32(buf[4:])
		slot := tx >> 16
		if int(slot) >= len(s.slots) {
			continue
		}
		c := s.slots[slot]
		if !c.want.CompareAndSwap(tx, 0) {
			continue
		}
		// The swap orders this read after the client's write of action,
		// and the client writes it again only after taking this reply.
		r, err := parseReply(buf[:n], c.action, d.v6)
		c.replies <- udpDelivery{r: r, err: err, at: time.Now()}
	}
}

// udpSession is one simulated UDP client: one connection ID, reused until
// it is ConnIDTTL old or the tracker answers an error.
type udpSession struct {
	d    *udpDriver
	sock *udpSock
	slot uint32
	seq  uint16
	// action is the action of the awaited reply; want is its transaction
	// ID, zero when nothing is awaited. The reader takes a reply by
	// swapping want to zero, after which it alone sends on replies.
	action  uint32
	want    atomic.Uint32
	replies chan udpDelivery

	connID uint64
	connAt time.Time
	buf    []byte
	timer  *time.Timer
}

func (c *udpSession) nextTx() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq = 1
	}
	return c.slot<<16 | uint32(c.seq)
}

// exchange sends pkt, carrying transaction ID tx, and waits for the reply
// to action. ok reports whether the request ended other than by ctx.
func (c *udpSession) exchange(ctx context.Context, tx uint32, action uint32, pkt []byte) (udpDelivery, outcome, bool) {
	c.action = action
	c.want.Store(tx)
	if _, err := c.sock.conn.Write(pkt); err != nil {
		if c.want.CompareAndSwap(tx, 0) {
			return udpDelivery{err: err, at: time.Now()}, netError, ctx.Err() == nil
		}
		m := <-c.replies // answered all the same
		return m, classify(m), true
	}
	if c.timer == nil {
		c.timer = time.NewTimer(c.d.cfg.Timeout)
	} else {
		c.timer.Reset(c.d.cfg.Timeout)
	}
	select {
	case m := <-c.replies:
		c.timer.Stop()
		return m, classify(m), true
	case <-c.timer.C:
	case <-ctx.Done():
		c.timer.Stop()
	}
	if c.want.CompareAndSwap(tx, 0) {
		return udpDelivery{at: time.Now()}, timeout, ctx.Err() == nil
	}
	m := <-c.replies // the reader took it just now
	return m, classify(m), true
}

func classify(m udpDelivery) outcome {
	switch {
	case m.err != nil:
		return malformed
	case m.r.action == actionError:
		return trackerError
	}
	return ok
}

// connected makes sure the client holds a live connection ID, connecting
// if needed. It returns the connect's outcome (ok if none was needed) and
// false if ctx ended it.
func (c *udpSession) connected(ctx context.Context) (outcome, bool) {
	if c.connID != 0 && time.Since(c.connAt) < c.d.cfg.ConnIDTTL {
		return ok, true
	}
	c.connID = 0
	sent := time.Now()
	tx := c.nextTx()
	m, o, live := c.exchange(ctx, tx, actionConnect, appendConnect(c.buf[:0], tx))
	if !live {
		return o, false
	}
	c.d.st.record(actConnect, o, m.at.Sub(sent), 0)
	if o == ok {
		c.connID, c.connAt = m.r.connID, sent
	}
	return o, true
}

func (c *udpSession) announce(ctx context.Context, a *announce, start time.Time) (outcome, bool) {
	if o, live := c.connected(ctx); o != ok || !live {
		return o, live
	}
	tx := c.nextTx()
	m, o, live := c.exchange(ctx, tx, actionAnnounce, appendAnnounce(c.buf[:0], c.connID, tx, a))
	return c.finish(actAnnounce, m, o, live, start)
}

func (c *udpSession) scrape(ctx context.Context, hashes [][20]byte, start time.Time) (outcome, bool) {
	if o, live := c.connected(ctx); o != ok || !live {
		return o, live
	}
	tx := c.nextTx()
	m, o, live := c.exchange(ctx, tx, actionScrape, appendScrape(c.buf[:0], c.connID, tx, hashes))
	return c.finish(actScrape, m, o, live, start)
}

// finish records a request and drops the connection ID after an error
// answer, as the likely cause is its expiry. A timeout keeps it: BEP 15
// clients retry with the ID they hold.
func (c *udpSession) finish(a action, m udpDelivery, o outcome, live bool, start time.Time) (outcome, bool) {
	if !live {
		return o, false
	}
	if o == trackerError || o == malformed {
		c.connID = 0
	}
	c.d.st.record(a, o, m.at.Sub(start), m.r.entries)
	return o, true
}
