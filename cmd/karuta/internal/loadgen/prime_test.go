package loadgen

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

func TestHeld(t *testing.T) {
	if h := testWorkload(100, 1000, 1.1).held(); h != 1000 {
		t.Errorf("1000 peers in 100 swarms: %d held, want all", h)
	}
	// Zipf(1.1) over 100 swarms puts more than 65535 of 300 000 peers in
	// the first swarms; on one address those share 65535 ports, as a
	// tracker keying peers by address and port sees them.
	w := testWorkload(100, 300000, 1.1)
	distinct := map[[2]int]bool{}
	for p := range w.peers() {
		distinct[[2]int{w.swarmOf(p), int(peerPort(p))}] = true
	}
	if w.first[1]-w.first[0] <= 65535 || w.held() != len(distinct) {
		t.Errorf("%d held, %d distinct swarm and port pairs; want them equal, with the first swarm over 65535", w.held(), len(distinct))
	}
}

func TestSwarmOf(t *testing.T) {
	for _, z := range []float64{0, 1.1} {
		w := testWorkload(100, 1000, z)
		if w.peers() != 1000 {
			t.Fatalf("zipf %v: %d peers, want 1000", z, w.peers())
		}
		for p := range w.peers() {
			s := w.swarmOf(p)
			if s < 0 || s >= 100 || p < w.first[s] || p >= w.first[s+1] {
				t.Fatalf("zipf %v: peer %d placed in swarm %d, which holds %d..%d", z, p, s, w.first[max(s, 0)], w.first[min(s+1, 100)])
			}
		}
	}
}

// TestPrimeAnnouncesEveryPeer primes a population against a tracker that
// drops the first announce of every tenth peer and never answers one
// peer: every other peer must be announced, in its own swarm, and the
// silent one counted as not announced after its tries.
func TestPrimeAnnouncesEveryPeer(t *testing.T) {
	const swarms, peers = 20, 200
	w := testWorkload(swarms, peers, 1.1)
	silent := peerID(77)
	var mu sync.Mutex
	seen := map[[20]byte]int{}         // announces received by peer ID
	swarmOf := map[[20]byte][20]byte{} // infohash by peer ID
	addr := fakeTracker(t, func(req []byte) []byte {
		tx := be.Uint32(req[12:])
		switch be.Uint32(req[8:]) {
		case actionConnect:
			return connectAnswer(tx, 3)
		case actionAnnounce:
			var id, ih [20]byte
			copy(ih[:], req[16:36])
			copy(id[:], req[36:56])
			if numWant := int32(be.Uint32(req[92:])); numWant != 0 {
				t.Errorf("prime announce with numwant %d, want 0", numWant)
			}
			mu.Lock()
			seen[id]++
			n := seen[id]
			swarmOf[id] = ih
			mu.Unlock()
			if id == silent || (n == 1 && id[19]%10 == 3) {
				return nil
			}
			return emptyAnnounceAnswer(tx)
		}
		return nil
	})
	cfg := Default()
	cfg.Concurrency, cfg.Workers, cfg.Timeout = 8, 2, 50*time.Millisecond
	d, err := newUDPDriver(addr, []int{0, 1, 2, 3, 4, 5, 6, 7}, &cfg, &stats{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := &plan{mode: modePrime, w: w, clients: cfg.Concurrency}
	d.drive(context.Background(), p)
	res := p.primeResult(time.Second)
	if res.Peers != peers || res.Failed != 1 {
		t.Errorf("prime = %+v, want %d peers, 1 not announced", res, peers)
	}
	mu.Lock()
	defer mu.Unlock()
	for p := range peers {
		id := peerID(p)
		want := 1
		switch {
		case id == silent:
			want = primeTries
		case id[19]%10 == 3:
			want = 2
		}
		if seen[id] != want {
			t.Errorf("peer %d announced %d times, want %d", p, seen[id], want)
		}
		if swarmOf[id] != infoHash(w.swarmOf(p)) {
			t.Errorf("peer %d announced in the wrong swarm", p)
		}
	}
}

// TestPrimeOverHTTP primes a population through the HTTP driver against
// a tracker that fails every fifth peer's first announce: every peer is
// announced, numwant 0, the failed ones once more.
func TestPrimeOverHTTP(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("numwant") != "0" || q.Get("event") != "started" {
			t.Errorf("prime announce %s: want numwant 0 and event started", r.URL.RawQuery)
		}
		id := q.Get("peer_id")
		mu.Lock()
		seen[id]++
		n := seen[id]
		mu.Unlock()
		if n == 1 && id[19]%5 == 0 {
			_, _ = io.WriteString(w, "d14:failure reason4:busye")
			return
		}
		_, _ = io.WriteString(w, "d8:intervali1800e5:peers0:e")
	}))
	t.Cleanup(srv.Close)
	cfg := Default()
	cfg.Concurrency, cfg.Timeout = 4, 2*time.Second
	tgt, err := cfg.target(srv.URL + "/announce")
	if err != nil {
		t.Fatal(err)
	}
	w := testWorkload(10, 200, 0)
	d := newHTTPDriver(tgt, []int{0, 1, 2, 3}, &cfg, &stats{})
	defer d.Close()
	p := &plan{mode: modePrime, w: w, clients: cfg.Concurrency}
	d.drive(context.Background(), p)
	if res := p.primeResult(time.Second); res.Peers != 200 || res.Failed != 0 {
		t.Errorf("prime = %+v, want 200 peers, none failed", res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 200 {
		t.Errorf("%d peers announced, want 200", len(seen))
	}
	for id, n := range seen {
		if want := 1 + map[bool]int{true: 1}[id[19]%5 == 0]; n != want {
			t.Errorf("peer %q announced %d times, want %d", id, n, want)
		}
	}
}
