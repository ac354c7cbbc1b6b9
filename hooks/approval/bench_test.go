package approval

import (
	"bufio"
	"context"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// writeHashes writes n random v1 infohashes, one per line, and returns
// the file's path and the hashes.
func writeHashes(b *testing.B, n int) (string, []bittorrent.InfoHash) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "torrents")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	rng := rand.New(rand.NewPCG(3, 4))
	hashes := make([]bittorrent.InfoHash, n)
	line := make([]byte, 41)
	line[40] = '\n'
	for i := range hashes {
		for j := range hashes[i] {
			hashes[i][j] = byte(rng.Uint32())
		}
		hex.Encode(line, hashes[i][:])
		_, _ = w.Write(line)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path, hashes
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkLoad1M loads a file of a million infohashes. Besides ns/op it
// reports the heap the loaded list keeps (B/entry), measured with
// runtime.MemStats after GC.
func BenchmarkLoad1M(b *testing.B) {
	const n = 1_000_000
	path, _ := writeHashes(b, n)
	cfg := TorrentConfig{Mode: Allow, File: path}
	var kept uint64
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		before := heapInUse()
		b.StartTimer()
		h, err := NewTorrent(cfg, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		kept = heapInUse() - before
		runtime.KeepAlive(h)
		_ = h.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(kept)/n, "B/entry")
}

// BenchmarkAnnounce1M is the per-request cost with a million-entry list.
func BenchmarkAnnounce1M(b *testing.B) {
	const n = 1_000_000
	path, hashes := writeHashes(b, n)
	h, err := NewTorrent(TorrentConfig{Mode: Allow, File: path}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	req := bittorrent.AnnounceRequest{}
	resp := bittorrent.AnnounceResponse{}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req.InfoHash = hashes[rng.IntN(n)]
		if err := h.HandleAnnounce(context.Background(), &req, &resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientAnnounce(b *testing.B) {
	h, err := NewClient(ClientConfig{Mode: Allow, List: []string{"-qB4650-", "-TR", "T03I", "-UT3550-", "-lt0D"}}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	req := bittorrent.AnnounceRequest{PeerID: pid("-UT3550-")}
	resp := bittorrent.AnnounceResponse{}
	b.ReportAllocs()
	for b.Loop() {
		if err := h.HandleAnnounce(context.Background(), &req, &resp); err != nil {
			b.Fatal(err)
		}
	}
}
