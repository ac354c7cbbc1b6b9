package udp

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// testKey is the connection ID key of tests that do not say otherwise.
const testKey = "karuta-test-key-0123456789abcdef"

// testNow is the fixed clock of handler-level tests.
var testNow = time.Unix(1_700_000_000, 0)

// fakeTracker stands in for the hook chain: it answers with fixed peers and
// counts, and records what it was asked.
type fakeTracker struct {
	peers  []bittorrent.Peer // Announce returns those of the announcer's family
	counts bittorrent.Counts

	mu           sync.Mutex
	announceErr  error
	scrapeErr    error
	lastAnnounce bittorrent.AnnounceRequest
	lastScrape   []bittorrent.InfoHash

	after chan bittorrent.AnnounceRequest // AfterAnnounce sends here if non-nil
}

var _ hooks.Tracker = (*fakeTracker)(nil)

func (f *fakeTracker) Announce(_ context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastAnnounce = *req
	if f.announceErr != nil {
		return f.announceErr
	}
	// Like the chain: a default for numwant, then peers of the
	// announcer's family.
	if !req.NumWantSet {
		req.NumWant = 50
	}
	resp.Reset()
	resp.Interval, resp.MinInterval = 1800, 900
	resp.Complete, resp.Incomplete = f.counts.Seeders, f.counts.Leechers
	v4 := req.Addr.Addr().Is4()
	for _, p := range f.peers {
		if uint32(len(resp.Peers)) == req.NumWant {
			break
		}
		if p.Addr.Addr().Is4() == v4 {
			resp.Peers = append(resp.Peers, p)
		}
	}
	return nil
}

// Scrape answers each infohash with counts taken from its first bytes, so
// tests can tell the entries apart; it enforces a maximum like the chain.
func (f *fakeTracker) Scrape(_ context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastScrape = append(f.lastScrape[:0], req.InfoHashes...)
	if f.scrapeErr != nil {
		return f.scrapeErr
	}
	switch {
	case len(req.InfoHashes) == 0:
		return bittorrent.ErrMissingInfoHash
	case len(req.InfoHashes) > 64:
		return bittorrent.ErrTooManyHashes
	}
	resp.Reset()
	for _, ih := range req.InfoHashes {
		resp.Files = append(resp.Files, bittorrent.Scrape{InfoHash: ih, Counts: bittorrent.Counts{
			Seeders: uint32(ih[0]), Snatches: uint32(ih[1]), Leechers: uint32(ih[2]),
		}})
	}
	return nil
}

func (f *fakeTracker) AfterAnnounce(req *bittorrent.AnnounceRequest) {
	if f.after != nil {
		select {
		case f.after <- *req:
		default:
		}
	}
}

// testPeers returns n IPv4 and n IPv6 peers.
func testPeers(n int) []bittorrent.Peer {
	var peers []bittorrent.Peer
	for i := range n {
		var id bittorrent.PeerID
		id[0] = byte(i)
		peers = append(peers,
			bittorrent.Peer{ID: id, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(6000+i))},
			bittorrent.Peer{ID: id, Addr: netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}), uint16(7000+i))},
		)
	}
	return peers
}

// newTestHandler returns a handler over tr with the given keys (testKey if
// none) and no metrics.
func newTestHandler(tb testing.TB, tr hooks.Tracker, keys ...string) *handler {
	tb.Helper()
	if len(keys) == 0 {
		keys = []string{testKey}
	}
	kr, err := newKeyring(keys)
	if err != nil {
		tb.Fatal(err)
	}
	var p atomic.Pointer[keyring]
	p.Store(kr)
	return newHandler(context.Background(), tr, (*frontends.Recorder)(nil), &p, zap.NewNop(), ratelog.New(time.Second))
}

// handlePacket runs pkt from `from` through h at now in a fresh slot.
func handlePacket(h *handler, pkt []byte, from netip.AddrPort, now time.Time) *slot {
	s := newSlot()
	s.n = copy(s.buf, pkt)
	s.from = from
	h.handle(&s, now)
	return &s
}

// mintFor returns a connection ID for ip at now under keys (testKey if
// none).
func mintFor(tb testing.TB, ip netip.Addr, now time.Time, keys ...string) uint64 {
	tb.Helper()
	if len(keys) == 0 {
		keys = []string{testKey}
	}
	kr, err := newKeyring(keys)
	if err != nil {
		tb.Fatal(err)
	}
	var m idMAC
	m.use(kr)
	return m.mint(ip, now)
}

// Request builders: the client's side of the wire format, field by field.

func header(connID uint64, action, txID uint32) []byte {
	b := binary.BigEndian.AppendUint64(nil, connID)
	b = binary.BigEndian.AppendUint32(b, action)
	return binary.BigEndian.AppendUint32(b, txID)
}

func connectPacket(txID uint32) []byte { return header(protocolID, actionConnect, txID) }

// announce holds the fields of an announce request.
type announce struct {
	infoHash   bittorrent.InfoHash
	peerID     bittorrent.PeerID
	downloaded uint64
	left       uint64
	uploaded   uint64
	event      uint32
	ip         uint32
	key        uint32
	numWant    int32
	port       uint16
	options    []byte
}

// testAnnounce returns a typical announce: a leecher starting, wanting the
// default number of peers, with no options.
func testAnnounce() announce {
	a := announce{downloaded: 1, left: 1000, uploaded: 2, event: 2, key: 0xabcdef01, numWant: -1, port: 6881}
	for i := range a.infoHash {
		a.infoHash[i] = byte(0xa0 + i)
		a.peerID[i] = byte('A' + i)
	}
	return a
}

func (a announce) packet(connID uint64, txID uint32) []byte {
	b := header(connID, actionAnnounce, txID)
	b = append(b, a.infoHash[:]...)
	b = append(b, a.peerID[:]...)
	b = binary.BigEndian.AppendUint64(b, a.downloaded)
	b = binary.BigEndian.AppendUint64(b, a.left)
	b = binary.BigEndian.AppendUint64(b, a.uploaded)
	b = binary.BigEndian.AppendUint32(b, a.event)
	b = binary.BigEndian.AppendUint32(b, a.ip)
	b = binary.BigEndian.AppendUint32(b, a.key)
	b = binary.BigEndian.AppendUint32(b, uint32(a.numWant))
	b = binary.BigEndian.AppendUint16(b, a.port)
	return append(b, a.options...)
}

// urlOption encodes s as BEP 41 URL data options of at most 255 bytes each.
func urlOption(s string) []byte {
	var b []byte
	for len(s) > 0 {
		n := min(len(s), 255)
		b = append(append(b, optionURLData, byte(n)), s[:n]...)
		s = s[n:]
	}
	return b
}

func scrapePacket(connID uint64, txID uint32, hashes ...bittorrent.InfoHash) []byte {
	b := header(connID, actionScrape, txID)
	for _, ih := range hashes {
		b = append(b, ih[:]...)
	}
	return b
}

func hashN(n byte) bittorrent.InfoHash {
	var ih bittorrent.InfoHash
	for i := range ih {
		ih[i] = n + byte(i)
	}
	return ih
}

// Reply readers.

func replyAction(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func replyTxID(b []byte) uint32   { return binary.BigEndian.Uint32(b[4:]) }
