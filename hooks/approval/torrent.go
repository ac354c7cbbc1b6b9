package approval

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/bits"
	"slices"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// TorrentName is torrent_approval's name in the `hooks` list of the config.
const TorrentName = "torrent_approval"

// Torrent is the torrent_approval PreHook: it refuses announces and scrapes
// for infohashes that are (allow mode) not listed or (deny mode) listed.
// Safe for concurrent use.
type Torrent struct {
	mode              Mode
	listHook[hashSet] // Reload and Close
}

// NewTorrent loads the list and, if it has a file and a check interval,
// starts watching the file; Close stops the watcher.
func NewTorrent(cfg TorrentConfig, log *zap.Logger) (*Torrent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := newListHook(TorrentName, Config(cfg), func() builder[hashSet] { return &hashBuilder{} }, log)
	if err != nil {
		return nil, err
	}
	return &Torrent{mode: cfg.Mode, listHook: l}, nil
}

// HandleAnnounce refuses the announce if its torrent is not approved.
func (t *Torrent) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, _ *bittorrent.AnnounceResponse) error {
	return t.check(t.src.current(), req.InfoHash)
}

// HandleScrape refuses the whole scrape, naming the first torrent that is
// not approved. Dropping just that entry is not an option: UDP scrape
// answers are positional, so the client would read the wrong counts.
func (t *Torrent) HandleScrape(_ context.Context, req *bittorrent.ScrapeRequest, _ *bittorrent.ScrapeResponse) error {
	set := t.src.current()
	for _, ih := range req.InfoHashes {
		if err := t.check(set, ih); err != nil {
			return err
		}
	}
	return nil
}

func (t *Torrent) check(set *hashSet, ih bittorrent.InfoHash) error {
	if set.contains(ih) == (t.mode == Allow) {
		return nil
	}
	return bittorrent.ClientError(fmt.Sprintf("torrent %s is not approved", ih))
}

// hashSet is an immutable set of infohashes: a sorted array, 20 bytes per
// entry, plus an index of where each value of the top bits starts, so a
// lookup touches one index slot and a short run of neighbours. A sorted
// array costs less than half the memory of a map, and since infohashes are
// uniform the runs are short; a list crafted to crowd one run still costs
// only a binary search.
type hashSet struct {
	hashes []bittorrent.InfoHash // sorted, distinct
	start  []uint32              // start[b] is the first hash whose top bits are b; one extra at the end
	shift  uint                  // 32 minus the number of index bits
}

// contains reports whether ih is in the set.
func (s *hashSet) contains(ih bittorrent.InfoHash) bool {
	b := s.bucket(ih)
	run := s.hashes[s.start[b]:s.start[b+1]]
	_, found := slices.BinarySearchFunc(run, ih, compareHash)
	return found
}

// bucket returns ih's index slot: its top bits. With no index bits the
// shift is 32, which gives 0 for every hash.
func (s *hashSet) bucket(ih bittorrent.InfoHash) uint32 {
	return binary.BigEndian.Uint32(ih[:4]) >> s.shift
}

func compareHash(a, b bittorrent.InfoHash) int { return bytes.Compare(a[:], b[:]) }

type hashBuilder struct {
	hashes []bittorrent.InfoHash
}

func (b *hashBuilder) add(entry []byte) error {
	ih, err := parseInfoHash(entry)
	if err != nil {
		return err
	}
	if len(b.hashes) == math.MaxUint32 {
		return fmt.Errorf("more than %d entries", uint32(math.MaxUint32))
	}
	b.hashes = append(b.hashes, ih)
	return nil
}

// maxIndexBits bounds the index at 256 KiB, about sixteen hashes per
// bucket at a million entries.
const maxIndexBits = 16

// build sorts by bucket first (a counting sort on the index bits), then
// each short bucket on its own: several times faster than one big sort,
// and the result lands in an array of exactly the right size.
func (b *hashBuilder) build() (*hashSet, int) {
	in := b.hashes
	b.hashes = nil
	// About eight hashes per bucket: short runs, small index.
	idxBits := min(max(bits.Len(uint(len(in)))-3, 0), maxIndexBits)
	s := &hashSet{start: make([]uint32, 1<<idxBits+1), shift: uint(32 - idxBits)}
	for _, ih := range in {
		s.start[s.bucket(ih)+1]++
	}
	for i := 1; i < len(s.start); i++ {
		s.start[i] += s.start[i-1]
	}
	out := make([]bittorrent.InfoHash, len(in))
	next := slices.Clone(s.start[:len(s.start)-1])
	for _, ih := range in {
		bk := s.bucket(ih)
		out[next[bk]] = ih
		next[bk]++
	}
	// Sort and deduplicate each bucket, moving it down over the gaps that
	// duplicates left, and record where it now starts.
	w := uint32(0)
	for bk := range len(s.start) - 1 {
		run := out[s.start[bk]:s.start[bk+1]]
		slices.SortFunc(run, compareHash)
		run = slices.Compact(run)
		s.start[bk] = w
		w += uint32(copy(out[w:], run)) //nolint:gosec // G115: add caps the set at MaxUint32 hashes
	}
	s.start[len(s.start)-1] = w
	s.hashes = out[:w]
	if len(out)-int(w) > len(out)/8 {
		s.hashes = slices.Clone(s.hashes) // many duplicates: the set lives long, so drop the spare room
	}
	return s, int(w)
}

// grow makes room for about n more entries, so a big file is read without
// repeated copying.
func (b *hashBuilder) grow(n int) { b.hashes = slices.Grow(b.hashes, n) }

// parseInfoHash reads a 40-character hex v1 infohash, or a 64-character
// v2 one truncated to the 20 bytes clients announce.
func parseInfoHash(entry []byte) (bittorrent.InfoHash, error) {
	var ih bittorrent.InfoHash
	var rest [12]byte
	ok := false
	switch len(entry) {
	case 40:
		_, err := hex.Decode(ih[:], entry)
		ok = err == nil
	case 64:
		_, err1 := hex.Decode(ih[:], entry[:40])
		_, err2 := hex.Decode(rest[:], entry[40:])
		ok = err1 == nil && err2 == nil
	}
	if !ok {
		return ih, fmt.Errorf("%s is not a 40- or 64-character hex infohash", quote(entry))
	}
	return ih, nil
}
