// Package bittorrent holds the protocol-agnostic vocabulary of the tracker:
// infohashes, peers, and the announce and scrape requests and responses that
// frontends parse, hooks transform and stores answer. It imports nothing of
// Karuta's, so every other package may depend on it.
package bittorrent

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
)

// InfoHash identifies a swarm. BitTorrent v2 (BEP 52) infohashes are
// SHA-256 and are truncated to their first 20 bytes on the tracker protocol,
// so one fixed-size type serves both versions.
type InfoHash [20]byte

// String returns the infohash as lower-case hex.
func (ih InfoHash) String() string { return hex.EncodeToString(ih[:]) }

// ParseInfoHash decodes a 40-character (v1) or 64-character (v2, truncated to
// 20 bytes) hex string.
func ParseInfoHash(s string) (InfoHash, error) {
	var ih InfoHash
	switch len(s) {
	case 40, 64:
	default:
		return ih, fmt.Errorf("infohash %q: want 40 or 64 hex characters, got %d", s, len(s))
	}
	if _, err := hex.Decode(ih[:], []byte(s[:40])); err != nil {
		return ih, fmt.Errorf("infohash %q: %w", s, err)
	}
	if len(s) == 64 {
		if _, err := hex.DecodeString(s[40:]); err != nil {
			return ih, fmt.Errorf("infohash %q: %w", s, err)
		}
	}
	return ih, nil
}

// PeerID is the 20-byte identifier a client picks for itself.
type PeerID [20]byte

// Peer is one member of a swarm as handed out to other peers.
type Peer struct {
	ID   PeerID
	Addr netip.AddrPort
}

// Event is the announce event a client reports.
type Event uint8

// Announce events, numbered as in BEP 15 so the UDP frontend can use them
// directly.
const (
	EventNone Event = iota
	EventCompleted
	EventStarted
	EventStopped
)

// String returns the event name as it appears in an HTTP announce.
func (e Event) String() string {
	switch e {
	case EventNone:
		return ""
	case EventCompleted:
		return "completed"
	case EventStarted:
		return "started"
	case EventStopped:
		return "stopped"
	}
	return fmt.Sprintf("event(%d)", uint8(e))
}

// AnnounceRequest is an announce as the hook chain sees it, whichever
// frontend received it. Frontends reuse one value per worker, so hooks must
// not keep pointers into it after they return (copy what they need).
type AnnounceRequest struct {
	InfoHash InfoHash
	PeerID   PeerID
	// Addr is the address other peers should connect to: the client's
	// source IP (or the real IP given by a trusted proxy) and its port.
	Addr       netip.AddrPort
	Event      Event
	Uploaded   uint64
	Downloaded uint64
	Left       uint64
	// NumWant is how many peers the client asked for; NumWantSet is false
	// when it did not say, so the configured default applies.
	NumWant    uint32
	NumWantSet bool
	// Compact and NoPeerID shape the HTTP response (BEP 23); UDP ignores them.
	Compact  bool
	NoPeerID bool
	Key      uint32
	// Params carries the request's extra parameters: the HTTP query and route
	// parameters, or the BEP 41 URL data of a UDP announce.
	Params Params
	// Source is where the request came from when that is not Addr's IP:
	// the client's IP behind a WebRTC peer's socket address (IsWebRTC).
	// Hooks that limit or judge clients by IP use ClientIP.
	Source netip.Addr
}

// ClientIP is the IP the request came from: Source if set, else Addr's.
func (r *AnnounceRequest) ClientIP() netip.Addr {
	if r.Source.IsValid() {
		return r.Source
	}
	return r.Addr.Addr()
}

// Seeder reports whether the announcing peer has the whole torrent.
func (r *AnnounceRequest) Seeder() bool { return r.Left == 0 || r.Event == EventCompleted }

// AnnounceResponse is what the hook chain answers an announce with. Peers
// are of the announcer's own address family. Frontends reuse the value and
// its Peers buffer between requests.
type AnnounceResponse struct {
	// Interval and MinInterval are in seconds.
	Interval    uint32
	MinInterval uint32
	Complete    uint32
	Incomplete  uint32
	Peers       []Peer
}

// Reset empties the response for reuse, keeping the Peers buffer.
func (r *AnnounceResponse) Reset() {
	*r = AnnounceResponse{Peers: r.Peers[:0]}
}

// ScrapeRequest asks for the counts of one or more swarms.
type ScrapeRequest struct {
	InfoHashes []InfoHash
	// Addr is the client's address (its port may be zero).
	Addr   netip.AddrPort
	Params Params
}

// Counts are a swarm's totals over both address families.
type Counts struct {
	Seeders  uint32
	Leechers uint32
	// Snatches counts completed downloads (event=completed) seen so far.
	Snatches uint32
}

// PeerState says whether a peer is in a swarm and as what.
type PeerState uint8

// Peer states.
const (
	Absent PeerState = iota
	Seeding
	Leeching
)

// Scrape holds one swarm's counts.
type Scrape struct {
	InfoHash InfoHash
	Counts
}

// ScrapeResponse answers a ScrapeRequest with one Scrape per requested
// infohash, in request order.
type ScrapeResponse struct {
	Files []Scrape
}

// Reset empties the response for reuse, keeping the Files buffer.
func (r *ScrapeResponse) Reset() { r.Files = r.Files[:0] }

// ClientError is an error whose text is safe and meant to be shown to the
// client as a failure reason. Any other error reaching a frontend is reported
// to the client as a generic internal error, so internal detail never leaks.
type ClientError string

func (e ClientError) Error() string { return string(e) }

// Client errors shared by frontends and hooks.
var (
	ErrMissingInfoHash = ClientError("missing info_hash")
	ErrBadInfoHash     = ClientError("info_hash must be 20 bytes")
	ErrMissingPeerID   = ClientError("missing peer_id")
	ErrBadPeerID       = ClientError("peer_id must be 20 bytes")
	ErrMissingPort     = ClientError("missing port")
	ErrBadPort         = ClientError("port must be an integer from 1 to 65535")
	ErrBadEvent        = ClientError("event must be one of started, completed, stopped, paused or empty")
	ErrTooManyHashes   = ClientError("too many info_hash values in scrape")
	ErrInternal        = ClientError("internal server error")
)

// FailureReason returns the text to show a client for err: the message of a
// ClientError anywhere in err's chain, or a generic message otherwise.
func FailureReason(err error) string {
	var ce ClientError
	if errors.As(err, &ce) {
		return string(ce)
	}
	return string(ErrInternal)
}
