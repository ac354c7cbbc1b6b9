package udp

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Floor is a UDP server that answers BEP 15 requests without doing any
// tracker work, for benchmarks: the CPU it spends per response is what the
// socket path alone costs (the same sockets, the same recvmmsg/sendmmsg
// batches, the same per-reader buffers as Server), so the gap between it and
// a Karuta node is the tracker's own work. It answers a connect with a fixed
// connection ID, an announce with as many fixed IPv4 peers as the request
// asks for (50 when it leaves the choice to the tracker, as Karuta's
// default_numwant; at most floorMaxPeers), so its replies are as long as a
// tracker's, and a scrape with zero counts. It checks nothing and counts
// nothing; it is not a tracker.
type Floor struct {
	conns []*net.UDPConn
	wg    sync.WaitGroup
}

// floorPeers is the announce reply's peer count when numwant is -1, and
// floorMaxPeers the most it sends.
const (
	floorPeers    = 50
	floorMaxPeers = (maxReply - announceReplyLen) / peer4Len
)

// floorConnID is the connection ID the floor hands out and never checks.
const floorConnID uint64 = 0x6b617275746121

// StartFloor binds readers sockets to addr (sharing the port where
// SO_REUSEPORT allows) and answers on each with one goroutine reading
// batchSize datagrams per system call, as Server does. Close stops it.
func StartFloor(addr string, readers, batchSize int) (*Floor, error) {
	if readers < 1 || readers > maxReaders {
		return nil, fmt.Errorf("udp floor: readers must be 1..%d", maxReaders)
	}
	if batchSize < 1 || batchSize > maxBatchSize {
		return nil, fmt.Errorf("udp floor: batch size must be 1..%d", maxBatchSize)
	}
	sockets := readers
	if !reusePort {
		sockets = 1
	}
	conns, err := listen(addr, sockets)
	if err != nil {
		return nil, fmt.Errorf("udp floor: listen on %s: %w", addr, err)
	}
	f := &Floor{conns: conns}
	for i := range readers {
		pio, batch, err := newPacketIO(conns[i%len(conns)], batchSize)
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("udp floor: %w", err)
		}
		slots := make([]slot, batch)
		for j := range slots {
			slots[j] = newSlot()
		}
		f.wg.Go(func() { serveFloor(pio, slots) })
	}
	return f, nil
}

// Addr returns the address the floor listens on.
func (f *Floor) Addr() net.Addr { return f.conns[0].LocalAddr() }

// Close closes the sockets and waits for the readers to stop.
func (f *Floor) Close() error {
	closeAll(f.conns)
	f.wg.Wait()
	return nil
}

// serveFloor answers batches on pio until its socket is closed or fails.
func serveFloor(pio packetIO, slots []slot) {
	for {
		n, err := pio.read(slots)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(readErrorPause) // as the frontend's reader: a lasting error must not spin the core being measured
			continue
		}
		batch := slots[:n]
		for i := range batch {
			floorReply(&batch[i])
		}
		_ = pio.write(batch) // a benchmark's lost reply shows as the client's timeout
	}
}

// floorReply sets s.reply to the fixed answer to its datagram, or nil for
// a datagram that is not a request.
func floorReply(s *slot) {
	s.reply, s.unsent = nil, false
	pkt := s.buf[:s.n]
	if len(pkt) < headerLen || len(pkt) > maxPacket {
		return
	}
	txID := be.Uint32(pkt[12:])
	switch be.Uint32(pkt[8:]) {
	case actionConnect:
		s.reply = writeConnect(s.out, txID, floorConnID)
	case actionAnnounce:
		if len(pkt) < announceLen {
			return
		}
		want := int32(be.Uint32(pkt[92:])) //nolint:gosec // G115: numwant is signed on the wire
		peers := floorPeers
		if want >= 0 {
			peers = min(int(want), floorMaxPeers)
		}
		putHeader(s.out, actionAnnounce, txID)
		be.PutUint32(s.out[8:], 1800)
		be.PutUint32(s.out[12:], 1)
		be.PutUint32(s.out[16:], 1)
		n := announceReplyLen + peers*peer4Len
		// The peers are whatever bytes the buffer holds (zeros at
		// first): the client only counts them.
		s.reply = s.out[:n]
	case actionScrape:
		hashes := (len(pkt) - headerLen) / infoHashLen
		putHeader(s.out, actionScrape, txID)
		n := scrapeReplyLen + hashes*scrapeEntryLen
		clear(s.out[scrapeReplyLen:n])
		s.reply = s.out[:n]
	}
}
