package varinterval

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

func TestRaisesWithinBounds(t *testing.T) {
	h, err := New(Config{Probability: 1, MaxIncrease: 10 * time.Second, MinIntervalToo: true})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for range 2000 {
		resp := bittorrent.AnnounceResponse{Interval: 100, MinInterval: 50}
		if err := h.HandleAnnounce(context.Background(), nil, &resp); err != nil {
			t.Fatal(err)
		}
		add := resp.Interval - 100
		if add < 1 || add > 10 {
			t.Fatalf("interval raised by %d, want 1..10", add)
		}
		if resp.MinInterval-50 != add {
			t.Fatalf("min interval raised by %d, interval by %d", resp.MinInterval-50, add)
		}
		seen[add] = true
	}
	if len(seen) != 10 {
		t.Errorf("saw %d distinct increases in 2000 draws, want all 10", len(seen))
	}
}

func TestProbability(t *testing.T) {
	h, err := New(Config{Probability: 0.25, MaxIncrease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	raised := 0
	const n = 20000
	for range n {
		resp := bittorrent.AnnounceResponse{Interval: 100, MinInterval: 50}
		_ = h.HandleAnnounce(context.Background(), nil, &resp)
		if resp.Interval != 100 {
			raised++
		}
		if resp.MinInterval != 50 {
			t.Fatal("min interval raised with min_interval_too off")
		}
	}
	// 25% of 20000 is 5000 with a standard deviation of about 61.
	if raised < 4500 || raised > 5500 {
		t.Errorf("raised %d of %d answers, want about 5000", raised, n)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		cfg Config
		key string
	}{
		{Config{Probability: 0, MaxIncrease: time.Minute}, "probability"},
		{Config{Probability: 1.5, MaxIncrease: time.Minute}, "probability"},
		{Config{Probability: 0.5, MaxIncrease: 0}, "max_increase"},
	}
	for _, tt := range tests {
		_, err := New(tt.cfg)
		if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
			t.Errorf("New(%+v) = %v, want an error naming %s", tt.cfg, err, tt.key)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}
