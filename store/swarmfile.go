package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// A swarm file keeps a store's swarms across restarts (store.snapshot_file).
// It is unrelated to the Swarm snapshots a cluster moves between nodes:
// this one is the whole store, on disk, with every peer's last-seen time.
// All integers are big-endian:
//
//	header  magic "KARUTASW" [8], version uint16 (1), written_at int64 (unix seconds)
//	swarm   'S', infohash [20], snatches uint32, n4 uint32, n6 uint32,
//	        n4 IPv4 peers: ip [4] port [2] id [20] seen int64 flags [1]
//	        n6 IPv6 peers: ip [16] port [2] id [20] seen int64 flags [1]
//	end     'E', swarms uint64, crc32c uint32 of every byte before it
//
// flags bit 0 marks a seeder; seen is the peer's last announce in unix
// seconds. A file is read twice: once to check it whole (checksum,
// structure, counts) and only then to load it, so a damaged file loads
// nothing rather than part of itself.
const (
	swarmFileMagic   = "KARUTASW"
	swarmFileVersion = 1
	swarmFileHeader  = len(swarmFileMagic) + 2 + 8
	swarmHeadLen     = 1 + 20 + 4 + 4 + 4
	swarmEndLen      = 1 + 8 + 4
	tagSwarm         = 'S'
	tagEnd           = 'E'
	flagSeeder       = 1
	filePeerExtra    = idLen + 8 + 1 // id, seen, flags after the address
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadSwarmFile is wrapped by every error ReadSwarms returns for a file
// that is not a complete swarm file of a known version: truncated, damaged
// or written by something else.
var ErrBadSwarmFile = errors.New("not a valid swarm file")

// SwarmFileStats says what reading or writing a swarm file did.
type SwarmFileStats struct {
	// Swarms and Peers are those written, or loaded into the store.
	Swarms int
	Peers  int
	// Expired counts peers read but not loaded because their lifetime had
	// passed; ExpiredSwarms the swarms left with no peer at all, which are
	// not loaded either (garbage collection would drop them at once).
	Expired       int
	ExpiredSwarms int
	// WrittenAt is when the file was written.
	WrittenAt time.Time
}

// WriteSwarms writes every swarm of the store to w in the swarm file
// format. Each swarm is copied under its shard's read lock and written
// after the lock is released, so announces wait only for the copy; swarms
// changed meanwhile are written as they were at their copy.
func (m *Memory) WriteSwarms(w io.Writer) (SwarmFileStats, error) {
	now := m.now()
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 64<<10)
	st := SwarmFileStats{WrittenAt: time.Unix(now.Unix(), 0)}
	var hdr [swarmFileHeader]byte
	copy(hdr[:], swarmFileMagic)
	binary.BigEndian.PutUint16(hdr[8:], swarmFileVersion)
	binary.BigEndian.PutUint64(hdr[10:], unixBits(now.Unix()))
	if _, err := bw.Write(hdr[:]); err != nil {
		return st, err
	}
	var buf []byte
	var err error
	m.Range(func(ih bittorrent.InfoHash) bool {
		var peers int
		buf, peers = m.appendSwarmRecord(ih, buf[:0])
		if len(buf) == 0 {
			return true // dropped since Range listed it
		}
		if _, err = bw.Write(buf); err != nil {
			return false
		}
		st.Swarms++
		st.Peers += peers
		if cap(buf) > 1<<20 {
			buf = nil // do not keep one huge swarm's buffer for the rest
		}
		return true
	})
	if err != nil {
		return st, err
	}
	var end [swarmEndLen]byte
	end[0] = tagEnd
	binary.BigEndian.PutUint64(end[1:], uint64(st.Swarms)) //nolint:gosec // G115: a count is never negative
	if _, err := bw.Write(end[:9]); err != nil {
		return st, err
	}
	if err := bw.Flush(); err != nil {
		return st, err
	}
	binary.BigEndian.PutUint32(end[9:], crc.Sum32())
	if _, err := w.Write(end[9:]); err != nil {
		return st, err
	}
	return st, nil
}

// appendSwarmRecord appends the file record of swarm ih to buf and reports
// its peer count; it appends nothing for a swarm that does not exist.
func (m *Memory) appendSwarmRecord(ih bittorrent.InfoHash, buf []byte) ([]byte, int) {
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.tab.get(&ih, h)
	if sw == nil {
		return buf, 0
	}
	v4, v6 := sh.set(sw, &m.fam4), sh.set(sw, &m.fam6)
	buf = append(buf, tagSwarm)
	buf = append(buf, ih[:]...)
	buf = binary.BigEndian.AppendUint32(buf, sh.snatches(sw))
	buf = binary.BigEndian.AppendUint32(buf, uint32(v4.n)) //nolint:gosec // G115: a set's count is never negative
	buf = binary.BigEndian.AppendUint32(buf, uint32(v6.n)) //nolint:gosec // G115: as above
	epoch := m.epoch.Unix()
	for _, s := range []struct {
		set *peerSet
		f   *family
	}{{&v4, &m.fam4}, {&v6, &m.fam6}} {
		for i := range int(s.set.n) {
			r := s.set.rec(s.f, i)
			buf = append(buf, r[:s.f.addrLen+idLen]...)
			buf = binary.BigEndian.AppendUint64(buf, unixBits(epoch+int64(s.set.seenAt(s.f, i))))
			var flags byte
			if i < s.set.seeders() {
				flags = flagSeeder
			}
			buf = append(buf, flags)
		}
	}
	return buf, int(v4.n + v6.n)
}

// ReadSwarms loads a swarm file written by WriteSwarms into the store,
// leaving out peers whose last announce is more than PeerLifetime before
// now. It checks the whole file before loading any of it: an error
// wrapping ErrBadSwarmFile means nothing was loaded. Loaded peers are put
// as if they had last announced when the file says, and snatch counts are
// merged (the larger wins), so loading into a store that already holds
// some of the swarms is harmless.
func (m *Memory) ReadSwarms(r io.ReadSeeker, now time.Time) (SwarmFileStats, error) {
	if _, err := m.scanSwarms(r, now, false); err != nil {
		return SwarmFileStats{}, err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return SwarmFileStats{}, fmt.Errorf("rewind: %w", err)
	}
	return m.scanSwarms(r, now, true)
}

// scanSwarms reads a swarm file through, checking it, and loads it into
// the store only with load set.
func (m *Memory) scanSwarms(r io.Reader, now time.Time, load bool) (SwarmFileStats, error) {
	var st SwarmFileStats
	sr := &swarmReader{r: bufio.NewReaderSize(r, 64<<10), crc: crc32.New(castagnoli)}
	hdr, err := sr.read(swarmFileHeader)
	if err != nil {
		return st, err
	}
	if string(hdr[:8]) != swarmFileMagic {
		return st, fmt.Errorf("%w: starts with %q, not %q", ErrBadSwarmFile, hdr[:8], swarmFileMagic)
	}
	if v := binary.BigEndian.Uint16(hdr[8:]); v != swarmFileVersion {
		return st, fmt.Errorf("%w: version %d; this Karuta reads version %d", ErrBadSwarmFile, v, swarmFileVersion)
	}
	st.WrittenAt = time.Unix(unixFromBits(binary.BigEndian.Uint64(hdr[10:])), 0)
	cutoff := now.Unix() - int64(m.lifetime)
	var (
		batch  []bittorrent.Change
		seens  []int64
		swarms uint64
	)
	for {
		tag, err := sr.read(1)
		if err != nil {
			return st, err
		}
		if tag[0] == tagEnd {
			break
		}
		if tag[0] != tagSwarm {
			return st, fmt.Errorf("%w: byte %d: record tag %#x, want %q or %q", ErrBadSwarmFile, sr.off-1, tag[0], tagSwarm, tagEnd)
		}
		head, err := sr.read(swarmHeadLen - 1)
		if err != nil {
			return st, err
		}
		ih := bittorrent.InfoHash(head[:20])
		snatches := binary.BigEndian.Uint32(head[20:])
		n4, n6 := binary.BigEndian.Uint32(head[24:]), binary.BigEndian.Uint32(head[28:])
		swarms++
		batch, seens = batch[:0], seens[:0]
		for fam, n := range []uint32{n4, n6} {
			addrLen := addrLen4
			if fam == 1 {
				addrLen = addrLen6
			}
			for range n {
				rec, err := sr.read(addrLen + filePeerExtra)
				if err != nil {
					return st, err
				}
				seen := unixFromBits(binary.BigEndian.Uint64(rec[addrLen+idLen:]))
				if seen < cutoff {
					st.Expired++
					continue
				}
				st.Peers++
				if !load {
					continue
				}
				c := bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Seeder: rec[addrLen+idLen+8]&flagSeeder != 0}
				var ip netip.Addr
				if fam == 0 {
					ip = netip.AddrFrom4([4]byte(rec[:4]))
				} else {
					ip = netip.AddrFrom16([16]byte(rec[:16]))
				}
				c.Peer.Addr = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rec[addrLen-2:]))
				c.Peer.ID = bittorrent.PeerID(rec[addrLen : addrLen+idLen])
				batch = append(batch, c)
				seens = append(seens, min(seen, now.Unix()))
				if len(batch) >= 1024 {
					m.restore(batch, seens)
					batch, seens = batch[:0], seens[:0]
				}
			}
		}
		if !load {
			continue
		}
		m.restore(batch, seens)
		// A swarm without a live peer is not created: garbage collection
		// would drop it, and its snatch count with it, at once.
		if !m.exists(ih) {
			st.ExpiredSwarms++
			continue
		}
		st.Swarms++
		if snatches > 0 {
			m.MergeSnatches(ih, snatches)
		}
	}
	rest, err := sr.read(8)
	if err != nil {
		return st, err
	}
	if n := binary.BigEndian.Uint64(rest); n != swarms {
		return st, fmt.Errorf("%w: the end record counts %d swarms, the file holds %d", ErrBadSwarmFile, n, swarms)
	}
	sum := sr.crc.Sum32()
	tail, err := sr.read(4)
	if err != nil {
		return st, err
	}
	if got := binary.BigEndian.Uint32(tail); got != sum {
		return st, fmt.Errorf("%w: checksum %08x, want %08x (the file is damaged)", ErrBadSwarmFile, got, sum)
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		return st, fmt.Errorf("%w: data after the end record at byte %d", ErrBadSwarmFile, sr.off)
	}
	return st, nil
}

// restore puts peers with the last-seen times in seens (unix seconds).
func (m *Memory) restore(batch []bittorrent.Change, seens []int64) {
	for i := range batch {
		m.apply(&batch[i], m.seconds(time.Unix(seens[i], 0)))
	}
}

// exists reports whether the store holds swarm ih.
func (m *Memory) exists(ih bittorrent.InfoHash) bool {
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.tab.lookup(&ih, h) >= 0
}

// swarmReader reads a swarm file in fixed-size pieces, hashing what it
// reads and turning a short read into ErrBadSwarmFile.
type swarmReader struct {
	r   *bufio.Reader
	crc hash.Hash32
	buf [maxStride + 16]byte
	off int64
}

// read returns the next n bytes (n <= len(buf)), valid until the next call.
func (sr *swarmReader) read(n int) ([]byte, error) {
	b := sr.buf[:n]
	got, err := io.ReadFull(sr.r, b)
	sr.off += int64(got)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("%w: truncated at byte %d", ErrBadSwarmFile, sr.off)
	}
	if err != nil {
		return nil, fmt.Errorf("read at byte %d: %w", sr.off, err)
	}
	sr.crc.Write(b)
	return b, nil
}

// SaveSwarmFile writes the store's swarms to path atomically: into a
// temporary file beside it, synced to disk, then renamed over path, so a
// crash at any moment leaves either the old file or the new one whole.
func (m *Memory) SaveSwarmFile(path string) (SwarmFileStats, error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return SwarmFileStats{}, fmt.Errorf("store: save swarms: %w", err)
	}
	tmp := f.Name()
	st, err := m.WriteSwarms(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return st, fmt.Errorf("store: save swarms to %s: %w", path, err)
	}
	// Sync the directory too, or the rename itself may not survive a crash.
	if d, err := os.Open(dir); err == nil { //nolint:gosec // G304: the directory of the operator's snapshot_file
		_ = d.Sync()
		_ = d.Close()
	}
	return st, nil
}

// tempPrefix is how the names of SaveSwarmFile's temporary files for path
// begin; os.CreateTemp adds digits.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// RemoveSwarmFileTemps deletes the temporary files that SaveSwarmFile
// left beside path when the process died while writing (one per crash,
// each as large as the file), and returns their names. Call it at start,
// before anything saves: a temporary file in use would be removed too.
func RemoveSwarmFileTemps(path string) ([]string, error) {
	dir, prefix := filepath.Dir(path), tempPrefix(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: look for stale swarm files: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(dir, e.Name())
		if err := os.Remove(name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("store: remove stale swarm files: %w", err)
	}
	return removed, nil
}

// badSuffix begins the names under which damaged swarm files are kept:
// PATH.bad-20261207T031500Z, in UTC, sortable by name.
const (
	badSuffix = ".bad-"
	badLayout = "20060102T150405Z"
)

// KeepBadSwarmFile renames a swarm file that did not load to a name with
// the time it was found bad, for inspection, and deletes the oldest such
// files (and a PATH.bad of older versions) beyond keep. It returns the
// new name and the names deleted.
func KeepBadSwarmFile(path string, now time.Time, keep int) (kept string, deleted []string, err error) {
	stamp := now.UTC().Format(badLayout)
	kept = path + badSuffix + stamp
	for i := 1; ; i++ { // two bad starts in one second
		if _, err := os.Lstat(kept); errors.Is(err, os.ErrNotExist) {
			break
		}
		kept = fmt.Sprintf("%s%s%s.%d", path, badSuffix, stamp, i)
	}
	if err := os.Rename(path, kept); err != nil {
		return "", nil, fmt.Errorf("store: keep bad swarm file: %w", err)
	}
	deleted, err = pruneBadSwarmFiles(path, keep)
	return kept, deleted, err
}

// pruneBadSwarmFiles deletes all but the newest keep of path's bad files.
func pruneBadSwarmFiles(path string, keep int) ([]string, error) {
	dir, base := filepath.Dir(path), filepath.Base(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: list bad swarm files: %w", err)
	}
	var bads []string
	for _, e := range entries {
		if n := e.Name(); (n == base+".bad" || strings.HasPrefix(n, base+badSuffix)) && e.Type().IsRegular() {
			bads = append(bads, filepath.Join(dir, n))
		}
	}
	// Newest first, by the time in the name; a same-second repeat's ".N"
	// sorts after its first, and the older versions' PATH.bad, a prefix
	// of the others, last.
	slices.Sort(bads)
	slices.Reverse(bads)
	var deleted []string
	var errs []error
	for _, name := range bads[min(keep, len(bads)):] {
		if err := os.Remove(name); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, name)
	}
	if err := errors.Join(errs...); err != nil {
		return deleted, fmt.Errorf("store: delete old bad swarm files: %w", err)
	}
	return deleted, nil
}

// LoadSwarmFile loads the swarm file at path with ReadSwarms. A missing
// file is not an error: it returns os.ErrNotExist wrapped, for the caller
// to tell a first start from a failure.
func (m *Memory) LoadSwarmFile(path string) (SwarmFileStats, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the operator's snapshot_file
	if err != nil {
		return SwarmFileStats{}, fmt.Errorf("store: load swarms: %w", err)
	}
	// Read only: a failed close loses nothing.
	defer func() { _ = f.Close() }()
	st, err := m.ReadSwarms(f, m.now())
	if err != nil {
		return st, fmt.Errorf("store: load swarms from %s: %w", path, err)
	}
	return st, nil
}

// unixBits and unixFromBits store unix seconds, which may be negative, in
// a file's unsigned 64-bit fields as two's complement, so they round-trip.
func unixBits(sec int64) uint64 { return uint64(sec) } //nolint:gosec // G115: two's complement on purpose

func unixFromBits(b uint64) int64 { return int64(b) } //nolint:gosec // G115: two's complement on purpose
