package loadgen

import (
	"math/rand/v2"
	"testing"
)

func testWorkload(swarms, peers int, s float64) *workload {
	c := Default()
	c.Swarms, c.Peers, c.Zipf = swarms, peers, s
	return newWorkload(swarms, peers, s, &c)
}

func TestZipfSkew(t *testing.T) {
	tests := []struct {
		name             string
		zipf             float64
		minTop, maxTop   float64 // share of picks that go to the top 1% of swarms
		minTail, maxTail float64 // share that goes to the bottom half
	}{
		// With s = 1.1 over 10 000 swarms, the top 100 carry about 60%.
		{"zipf 1.1", 1.1, 0.50, 0.75, 0.01, 0.10},
		{"zipf 0.8", 0.8, 0.20, 0.45, 0.10, 0.35},
		{"uniform", 0, 0.005, 0.015, 0.48, 0.52},
	}
	const swarms, draws = 10000, 200000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := testWorkload(swarms, 100000, tt.zipf)
			r := rand.New(rand.NewPCG(1, 2))
			var top, tail int
			for range draws {
				s := w.pickSwarm(r)
				if s < 0 || s >= swarms {
					t.Fatalf("picked swarm %d of %d", s, swarms)
				}
				if s < swarms/100 {
					top++
				}
				if s >= swarms/2 {
					tail++
				}
			}
			topShare, tailShare := float64(top)/draws, float64(tail)/draws
			if topShare < tt.minTop || topShare > tt.maxTop {
				t.Errorf("top 1%% of swarms got %.3f of picks, want %.3f..%.3f", topShare, tt.minTop, tt.maxTop)
			}
			if tailShare < tt.minTail || tailShare > tt.maxTail {
				t.Errorf("bottom half got %.3f of picks, want %.3f..%.3f", tailShare, tt.minTail, tt.maxTail)
			}
		})
	}
}

func TestPeersSpread(t *testing.T) {
	w := testWorkload(1000, 10000, 1.1)
	if w.first[0] != 0 || w.first[1000] != 10000 {
		t.Fatalf("peers span %d..%d, want 0..10000", w.first[0], w.first[1000])
	}
	for s := range 1000 {
		if w.first[s+1] <= w.first[s] {
			t.Fatalf("swarm %d has no peers", s)
		}
	}
	if big, small := w.first[1]-w.first[0], w.first[1000]-w.first[999]; big < 100*small {
		t.Errorf("biggest swarm has %d peers, smallest %d: not skewed", big, small)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		s := w.pickSwarm(r)
		if p := w.pickPeer(r, s); p < w.first[s] || p >= w.first[s+1] {
			t.Fatalf("peer %d is not in swarm %d", p, s)
		}
	}
}

func TestAnnounceIdentity(t *testing.T) {
	c := Default()
	c.Seeders = 0.3
	w := newWorkload(1, 1000, 1.1, &c)
	r := rand.New(rand.NewPCG(5, 6))
	ports := map[uint16][20]byte{}
	started, seeders := 0, 0
	for range 20000 {
		var a announce
		w.fillAnnounce(r, &a)
		if id, ok := ports[a.port]; ok && id != a.peerID {
			t.Fatalf("port %d used by two peers of one swarm", a.port)
		}
		ports[a.port] = a.peerID
		if a.event == eventStarted {
			started++
		}
		if a.left == 0 {
			seeders++
		}
	}
	if len(ports) != 1000 || started != 1000 {
		t.Errorf("%d peers seen, %d started events; want 1000 each", len(ports), started)
	}
	if share := float64(seeders) / 20000; share < 0.25 || share > 0.35 {
		t.Errorf("seeder share %.3f, want about 0.3", share)
	}
	if id := peerID(42); string(id[:]) != "-KB0001-000000000042" {
		t.Errorf("peerID(42) = %q", id)
	}
}

// A uniform population gives every swarm its share, give or take one
// peer: none takes the remainder of rounding.
func TestUniformPeersEven(t *testing.T) {
	w := testWorkload(50000, 500000, 0)
	if w.first[50000] != 500000 {
		t.Fatalf("%d peers; want 500000", w.first[50000])
	}
	for s := range 50000 {
		if n := w.first[s+1] - w.first[s]; n < 9 || n > 11 {
			t.Fatalf("swarm %d has %d peers; want 10 ± 1", s, n)
		}
	}
}
