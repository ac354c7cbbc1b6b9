package loadgen

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// udpDriver runs its clients over a few connected UDP sockets, one
// goroutine each. That goroutine is the event loop of the socket's
// clients: it reads answers in batches, records them, and sends each
// client's next request as soon as its answer is in (closed loop), when it
// falls due (open loop) or until the population is announced (priming),
// writing requests in batches. There is no goroutine, channel or timer per
// client, so the load generator's cost per request stays small however
// many clients are in flight, and it can offer a tracker more than the
// tracker serves: the tracker's reads then find full batches, as a busy
// tracker's do.
//
// Transaction IDs route answers: the top 16 bits are the client's slot
// on its socket, the low 16 a per-client sequence number.
type udpDriver struct {
	cfg   *Config
	st    *stats
	raddr netip.AddrPort // the tracker's
	v6    bool
	socks []*udpSock
}

// udpBatch is how many datagrams one system call reads or writes.
const udpBatch = 64

type udpSock struct {
	d       *udpDriver
	conn    *net.UDPConn
	io      *batchConn
	clients []*udpClient // by slot

	// Owned by run: the plan, the clients to send for now, the open
	// loop's clients waiting for their due time, and the clients not done.
	p      *plan
	ready  []*udpClient
	due    dueHeap
	active int
}

// newUDPDriver opens cfg.Workers sockets to host for the clients with
// global indexes ids.
func newUDPDriver(host string, ids []int, cfg *Config, st *stats) (*udpDriver, error) {
	raddr, err := net.ResolveUDPAddr("udp", host)
	if err != nil {
		return nil, fmt.Errorf("--url: %w", err)
	}
	ap := raddr.AddrPort()
	d := &udpDriver{cfg: cfg, st: st, raddr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), v6: raddr.IP.To4() == nil}
	for range min(cfg.Workers, max(len(ids), 1)) {
		conn, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			_ = d.Close()
			return nil, fmt.Errorf("udp socket to %s: %w", raddr, err)
		}
		_ = conn.SetReadBuffer(4 << 20)
		_ = conn.SetWriteBuffer(1 << 20)
		bc, err := newBatchConn(conn, udpBatch)
		if err != nil {
			_ = conn.Close()
			_ = d.Close()
			return nil, err
		}
		d.socks = append(d.socks, &udpSock{d: d, conn: conn, io: bc})
	}
	for i, id := range ids {
		s := d.socks[i%len(d.socks)]
		s.clients = append(s.clients, &udpClient{
			id: id, slot: uint32(len(s.clients)),
			rng: rand.New(rand.NewPCG(cfg.Seed, uint64(id))),
			buf: make([]byte, 0, announceLen+74*hashLen),
		})
	}
	return d, nil
}

// drive runs every socket's clients by p until ctx is done or p ends.
func (d *udpDriver) drive(ctx context.Context, p *plan) {
	var wg sync.WaitGroup
	for _, s := range d.socks {
		wg.Go(func() { s.run(ctx, p) })
	}
	wg.Wait()
}

// Close closes the sockets; call it once drive has returned.
func (d *udpDriver) Close() error {
	var err error
	for _, s := range d.socks {
		err = errors.Join(err, s.conn.Close())
	}
	return err
}

// udpClient is one simulated client: one connection ID, reused until it
// is ConnIDTTL old or the tracker answers an error, and at most one
// request in flight.
type udpClient struct {
	id   int    // global index: the open loop's schedule
	slot uint32 // index on its socket
	seq  uint16
	rng  *rand.Rand

	connID uint64
	connAt time.Time

	// The request in hand. busy: sent and awaited, with transaction ID
	// want, for wire action waiting (connect while connecting for it).
	act     action
	ann     announce
	hashes  [][20]byte
	start   time.Time // latency runs from here: when it was drawn or due
	busy    bool
	waiting uint32
	want    uint32
	sentAt  time.Time
	buf     []byte

	k    int // open loop: the schedule index of the next request
	try  int // priming: attempts at the peer so far
	done bool
}

func (c *udpClient) nextTx() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq = 1
	}
	return c.slot<<16 | uint32(c.seq)
}

// packet builds what c sends next: a connect if it holds no live
// connection ID, else its request.
func (c *udpClient) packet(now time.Time, ttl time.Duration) []byte {
	tx := c.nextTx()
	c.want, c.sentAt, c.busy = tx, now, true
	if c.connID == 0 || now.Sub(c.connAt) >= ttl {
		c.connID, c.waiting = 0, actionConnect
		c.buf = appendConnect(c.buf[:0], tx)
		return c.buf
	}
	if c.act == actScrape {
		c.waiting = actionScrape
		c.buf = appendScrape(c.buf[:0], c.connID, tx, c.hashes)
	} else {
		c.waiting = actionAnnounce
		c.buf = appendAnnounce(c.buf[:0], c.connID, tx, &c.ann)
	}
	return c.buf
}

// run is the event loop of s's clients.
func (s *udpSock) run(ctx context.Context, p *plan) {
	var (
		ttl  = s.d.cfg.ConnIDTTL
		wait = s.d.cfg.Timeout
		// scan is how often requests are checked for timeouts: each
		// times out between Timeout and Timeout+scan after it was sent.
		scan  = min(max(wait/20, time.Millisecond), 10*time.Millisecond)
		pkts  = make([][]byte, 0, len(s.clients))
		sent  = make([]*udpClient, 0, len(s.clients))
		bufs  = make([][]byte, udpBatch)
		sizes = make([]int, udpBatch)
	)
	for i := range bufs {
		bufs[i] = make([]byte, replyBufLen)
	}
	s.p, s.ready, s.due, s.active = p, s.ready[:0], s.due[:0], len(s.clients)
	now := time.Now()
	for _, c := range s.clients {
		c.k, c.busy, c.done = c.id, false, false
		s.line(c, now)
	}
	lastScan := now
	for ctx.Err() == nil && s.active > 0 {
		now = time.Now()
		for s.due.Len() > 0 && !s.due[0].start.After(now) {
			s.ready = append(s.ready, heap.Pop(&s.due).(*udpClient))
		}
		pkts, sent = pkts[:0], sent[:0]
		for _, c := range s.ready {
			pkts = append(pkts, c.packet(now, ttl))
			sent = append(sent, c)
		}
		s.ready = s.ready[:0]
		if len(pkts) > 0 {
			failed, err := s.io.write(pkts)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			for _, i := range failed { // refused by the kernel: ends at once
				s.d.st.record(sent[i].statAction(), netError, 0, 0)
				s.idle(sent[i], netError, now)
			}
		}
		if now.Sub(lastScan) >= scan {
			lastScan = now
			for _, c := range s.clients {
				if c.busy && now.Sub(c.sentAt) >= wait {
					// BEP 15 clients retry with the connection ID they hold.
					s.d.st.record(c.statAction(), timeout, 0, 0)
					s.idle(c, timeout, now)
				}
			}
		}
		if len(s.ready) > 0 {
			continue
		}
		wake := lastScan.Add(scan)
		if s.due.Len() > 0 && s.due[0].start.Before(wake) {
			wake = s.due[0].start
		}
		_ = s.conn.SetReadDeadline(wake)
		n, err := s.io.read(bufs, sizes)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // the deadline, or an ICMP error: those requests time out
		}
		at := time.Now()
		for i := range n {
			s.answer(bufs[i][:sizes[i]], at)
		}
	}
}

// line draws c's next request and queues it: to send now, or when due
// in open loop. A client with nothing left to send is done.
func (s *udpSock) line(c *udpClient, now time.Time) {
	p := s.p
	switch p.mode {
	case modePrime:
		i, more := p.nextPeer()
		if !more {
			c.done = true
			s.active--
			return
		}
		c.act, c.try, c.start = actAnnounce, 0, now
		p.w.fillPrime(i, &c.ann)
	case modeOpen:
		c.start = p.due(c.k)
		c.k += p.clients
		c.draw(p.w)
		heap.Push(&s.due, c)
		return
	default:
		c.start = now
		c.draw(p.w)
	}
	s.ready = append(s.ready, c)
}

// idle takes c back once its request ended with o.
func (s *udpSock) idle(c *udpClient, o outcome, now time.Time) {
	c.busy = false
	if s.p.mode == modePrime && !s.p.primed(&c.try, o) {
		s.ready = append(s.ready, c) // the same peer again
		return
	}
	s.line(c, now)
}

// draw fills c's next request from the workload.
func (c *udpClient) draw(w *workload) {
	if w.isScrape(c.rng) {
		c.act, c.hashes = actScrape, w.fillScrape(c.rng, c.hashes[:0])
		return
	}
	c.act = actAnnounce
	w.fillAnnounce(c.rng, &c.ann)
}

// statAction is what c's awaited answer counts as.
func (c *udpClient) statAction() action {
	if c.waiting == actionConnect {
		return actConnect
	}
	return c.act
}

// answer hands one datagram to the client awaiting it. Answers nobody
// awaits (late, after a timeout, or unknown) are dropped.
func (s *udpSock) answer(b []byte, at time.Time) {
	if len(b) < 8 {
		return
	}
	tx := be.Uint32(b[4:])
	slot := tx >> 16
	if int(slot) >= len(s.clients) {
		return
	}
	c := s.clients[slot]
	if !c.busy || c.want != tx {
		return
	}
	r, err := parseReply(b, c.waiting, s.d.v6)
	o := classify(r, err)
	if c.waiting == actionConnect {
		s.d.st.record(actConnect, o, at.Sub(c.sentAt), 0)
		if o != ok {
			s.idle(c, o, at) // the request it was for is not sent
			return
		}
		// The request itself leaves with the next batch.
		c.connID, c.connAt, c.busy = r.connID, c.sentAt, false
		s.ready = append(s.ready, c)
		return
	}
	if o == trackerError || o == malformed {
		c.connID = 0 // the likely cause is its expiry
	}
	s.d.st.record(c.act, o, at.Sub(c.start), r.entries)
	s.idle(c, o, at)
}

func classify(r udpReply, err error) outcome {
	switch {
	case err != nil:
		return malformed
	case r.action == actionError:
		return trackerError
	}
	return ok
}

// dueHeap orders open-loop clients by when their next request is due.
type dueHeap []*udpClient

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].start.Before(h[j].start) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(*udpClient)) }
func (h *dueHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return c
}
