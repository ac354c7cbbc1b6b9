package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

func TestAppliedStreamsFresh(t *testing.T) {
	chs := make([]bittorrent.Change, 10)
	for i := range chs {
		chs[i].InfoHash = ihN(i)
	}
	steps := []struct {
		name      string
		stream    uint64
		seq       uint64
		n         int
		wantFirst int // index into chs of the first fresh change
		wantN     int
	}{
		{"unnumbered is always fresh", 0, 0, 4, 0, 4},
		{"unnumbered again", 0, 0, 4, 0, 4},
		{"first forward", 7, 100, 4, 0, 4},
		{"the same forward retried", 7, 100, 4, 0, 0},
		{"retried with more behind it", 7, 100, 6, 4, 2},
		{"the next forward", 7, 106, 3, 0, 3},
		{"a gap (a forward given up on)", 7, 200, 2, 0, 2},
		{"an older forward, late", 7, 150, 2, 0, 0},
		{"another stream has its own numbers", 9, 100, 4, 0, 4},
	}
	var a appliedStreams
	for _, s := range steps {
		got := a.fresh(s.stream, s.seq, chs[:s.n])
		if len(got) != s.wantN || (s.wantN > 0 && got[0].InfoHash != chs[s.wantFirst].InfoHash) {
			t.Fatalf("%s: got %d changes starting %x; want %d starting at %d", s.name, len(got), firstIH(got), s.wantN, s.wantFirst)
		}
	}
}

func firstIH(chs []bittorrent.Change) []byte {
	if len(chs) == 0 {
		return nil
	}
	return chs[0].InfoHash[:4]
}

func TestAppliedStreamsBounded(t *testing.T) {
	var a appliedStreams
	one := []bittorrent.Change{{}}
	for s := range uint64(3 * maxStreams) {
		a.fresh(s+1, 0, one)
	}
	if n := len(a.next); n > maxStreams {
		t.Fatalf("%d streams remembered, want at most %d", n, maxStreams)
	}
}

// lossyTransport delivers the first apply it is asked to send but reports
// it as unreachable, as when the reply is lost on the way back.
type lossyTransport struct {
	transport.Transport
	lost atomic.Int32
}

func (l *lossyTransport) Call(ctx context.Context, addr string, req transport.Request) (transport.Reply, error) {
	rep, err := l.Transport.Call(ctx, addr, req)
	if _, ok := req.(*transport.ApplyRequest); ok && err == nil && l.lost.Add(1) == 1 {
		return nil, fmt.Errorf("reply lost: %w", transport.ErrUnreachable)
	}
	return rep, err
}

// A forward retried after its reply was lost is applied once: a complete
// and a stop of the same peer in one batch count one snatch, not two
// (issue 11, finding 8).
func TestRetriedForwardCountsOnce(t *testing.T) {
	net := transport.NewMemNet()
	b, bStore := newLoneCluster(t, net, "b", []string{"a", "b"}, nil)

	lossy := &lossyTransport{Transport: net.Transport("a")}
	a, _ := newLoneClusterOn(t, lossy, "a", []string{"a", "b"}, nil)

	ih := ownedBy(t, a.View(), "b")
	peer := bittorrent.Peer{Addr: netip.MustParseAddrPort("192.0.2.7:6881")}
	a.Apply([]bittorrent.Change{
		{InfoHash: ih, Peer: peer, Op: bittorrent.OpComplete, Seeder: true},
		{InfoHash: ih, Peer: peer, Op: bittorrent.OpRemove},
	})
	eventually.True(t, 5*time.Second, "the forward is retried and acknowledged", func() bool {
		return lossy.lost.Load() >= 2 && a.queued() == 0
	})
	if got := bStore.Counts(ih).Snatches; got != 1 {
		t.Fatalf("snatches on the owner = %d after a retried forward, want 1", got)
	}
	if got := testutil.ToFloat64(b.m.duplicates); got != 2 {
		t.Fatalf("the owner skipped %v duplicate changes, want the retried 2", got)
	}
}
