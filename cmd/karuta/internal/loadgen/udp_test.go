package loadgen

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTracker answers BEP 15 on loopback by a script: reply returns the
// answer to each request, or nil to drop it. It returns the address.
func fakeTracker(t *testing.T, reply func(req []byte) []byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := reply(buf[:n]); out != nil {
				_, _ = pc.WriteTo(out, addr)
			}
		}
	}()
	return pc.LocalAddr().String()
}

// driveUDP runs cfg's clients in closed loop against addr until the fake
// tracker calls stop, and returns what they recorded.
func driveUDP(ctx context.Context, t *testing.T, addr string, cfg Config) *stats {
	t.Helper()
	st := &stats{}
	st.recording.Store(true)
	ids := make([]int, cfg.Concurrency)
	for i := range ids {
		ids[i] = i
	}
	d, err := newUDPDriver(addr, ids, &cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.drive(ctx, &plan{mode: modeClosed, w: newWorkload(cfg.Swarms, cfg.Peers, cfg.Zipf, &cfg), clients: cfg.Concurrency})
	st.recording.Store(false)
	return st
}

// TestUDPSession plays one client against a tracker that drops the first
// announce and refuses the second: the client must time out keeping its
// connection ID, then reconnect after the error.
func TestUDPSession(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var connects, announces atomic.Int32
	addr := fakeTracker(t, func(req []byte) []byte {
		tx := be.Uint32(req[12:])
		switch be.Uint32(req[8:]) {
		case actionConnect:
			connects.Add(1)
			return connectAnswer(tx, 42)
		case actionAnnounce:
			n := announces.Add(1)
			if be.Uint64(req) != 42 {
				t.Errorf("announce with connection ID %d, want 42", be.Uint64(req))
			}
			switch n {
			case 1:
				return nil
			case 2:
				return append(be.AppendUint32(be.AppendUint32(nil, actionError), tx), "connection ID expired"...)
			case 3:
				stop() // after this answer
				return append(emptyAnnounceAnswer(tx), 127, 0, 0, 1, 0x1a, 0xe1)
			}
		}
		return nil
	})
	cfg := Default()
	cfg.Concurrency, cfg.Workers, cfg.Timeout, cfg.ScrapeRatio = 1, 1, 200*time.Millisecond, 0
	cfg.Swarms, cfg.Peers = 10, 100
	r := driveUDP(ctx, t, addr, cfg).result(time.Second)
	an, cn := r.Actions["announce"], r.Actions["connect"]
	if an.Timeouts != 1 || an.TrackerErrors != 1 || an.Responses-an.TrackerErrors != 1 || r.PeersPerAnnounce != 1 {
		t.Errorf("announce = %+v, peers per announce %v; want a timeout, an error and one answer with a peer", an, r.PeersPerAnnounce)
	}
	if cn.Responses != 2 || connects.Load() != 2 {
		t.Errorf("%d connects answered (%d seen); want 2: the error drops the connection ID", cn.Responses, connects.Load())
	}
}

// TestUDPLateReply checks that a reply arriving after its request timed
// out is not taken for the next request's.
func TestUDPLateReply(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var scrapes atomic.Int32
	delayed := make(chan []byte, 4)
	addr := fakeTracker(t, func(req []byte) []byte {
		tx := be.Uint32(req[12:])
		if be.Uint32(req[8:]) == actionConnect {
			return connectAnswer(tx, 7)
		}
		if scrapes.Add(1) == 4 {
			stop()
			return nil
		}
		out := be.AppendUint32(be.AppendUint32(nil, actionScrape), tx)
		out = append(out, make([]byte, 12)...)
		select {
		case old := <-delayed: // answer the previous scrape now, late
			delayed <- out
			return old
		default:
			delayed <- out
			return nil
		}
	})
	cfg := Default()
	cfg.Concurrency, cfg.Workers, cfg.Timeout, cfg.ScrapeRatio = 1, 1, 100*time.Millisecond, 1
	cfg.Swarms, cfg.Peers = 10, 100
	sc := driveUDP(ctx, t, addr, cfg).result(time.Second).Actions["scrape"]
	if sc.Timeouts != 3 || sc.Responses != 0 {
		t.Errorf("scrape = %+v; every reply came one request late, so the three answered time out", sc)
	}
}

// TestUDPManyInFlight keeps 150 clients on two sockets busy, several
// batches each, against a tracker that answers each datagram: every
// request is answered and none is lost or mismatched. (More clients would
// overflow the fake tracker's receive buffer at its default size.)
func TestUDPManyInFlight(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var announces atomic.Int64
	addr := fakeTracker(t, func(req []byte) []byte {
		tx := be.Uint32(req[12:])
		switch be.Uint32(req[8:]) {
		case actionConnect:
			return connectAnswer(tx, 11)
		case actionAnnounce:
			if announces.Add(1) == 20000 {
				stop()
			}
			return emptyAnnounceAnswer(tx)
		}
		return nil
	})
	cfg := Default()
	cfg.Concurrency, cfg.Workers, cfg.Timeout, cfg.ScrapeRatio = 150, 2, 5*time.Second, 0
	cfg.Swarms, cfg.Peers = 100, 10000
	r := driveUDP(ctx, t, addr, cfg).result(time.Second)
	an, cn := r.Actions["announce"], r.Actions["connect"]
	if cn.Responses != 150 || cn.Timeouts+cn.Malformed+cn.NetErrors != 0 {
		t.Errorf("connects %+v; want one per client, all answered", cn)
	}
	if an.Responses < 19000 || an.Timeouts+an.Malformed+an.NetErrors+an.TrackerErrors != 0 {
		t.Errorf("announces %+v; want the 20000 sent answered, bar those in flight at the end", an)
	}
}

// TestSpreadOverURLs runs a closed loop against two trackers: each of the
// four clients talks to one of them, so both answer about half the load.
func TestSpreadOverURLs(t *testing.T) {
	var counts [2]atomic.Int64
	var urls []string
	for i := range counts {
		addr := emptyTracker(t, func() { counts[i].Add(1) })
		urls = append(urls, "udp://"+addr+"/announce")
	}
	cfg := Default()
	cfg.URLs, cfg.Concurrency, cfg.Workers = urls, 4, 1
	cfg.Duration, cfg.Warmup, cfg.Timeout = 300*time.Millisecond, 0, 200*time.Millisecond
	cfg.Swarms, cfg.Peers, cfg.ScrapeRatio = 10, 100, 0
	res, err := Run(context.Background(), cfg, io.Discard, false)
	if err != nil {
		t.Fatal(err)
	}
	a, b := counts[0].Load(), counts[1].Load()
	if a == 0 || b == 0 || a > 3*b || b > 3*a {
		t.Errorf("announces per tracker %d and %d; want both loaded about evenly", a, b)
	}
	if len(res.URLs) != 2 || res.Actions["announce"].Responses == 0 {
		t.Errorf("result URLs %v, announces %d; want both URLs and answers", res.URLs, res.Actions["announce"].Responses)
	}
}

// connectAnswer is the reply to connect tx, giving connection ID id.
func connectAnswer(tx uint32, id uint64) []byte {
	return be.AppendUint64(be.AppendUint32(be.AppendUint32(nil, actionConnect), tx), id)
}

// emptyAnnounceAnswer is the reply to announce tx: an empty swarm.
func emptyAnnounceAnswer(tx uint32) []byte {
	out := be.AppendUint32(be.AppendUint32(nil, actionAnnounce), tx)
	return be.AppendUint32(be.AppendUint32(be.AppendUint32(out, 1800), 0), 0)
}

// emptyTracker is a fake tracker that answers connects and announces, every
// swarm empty, calling announced (if not nil) for each announce.
func emptyTracker(t *testing.T, announced func()) string {
	return fakeTracker(t, func(req []byte) []byte {
		tx := be.Uint32(req[12:])
		switch be.Uint32(req[8:]) {
		case actionConnect:
			return connectAnswer(tx, 9)
		case actionAnnounce:
			if announced != nil {
				announced()
			}
			return emptyAnnounceAnswer(tx)
		}
		return nil
	})
}
