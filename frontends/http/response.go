package http

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"
	"time"

	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Bencoded response bodies. Dictionary keys are written in sorted order, as
// BEP 3 requires: complete < incomplete < interval < min interval < peers <
// peers6, and ip < peer id < port.

// appendFailure appends a failure response (BEP 3) carrying reason.
func appendFailure(dst []byte, reason string) []byte {
	dst = append(dst, "d14:failure reason"...)
	dst = bencode.AppendString(dst, reason)
	return bencode.AppendEnd(dst)
}

// appendAnnounce appends the answer to an announce. v6 says the announcer
// is an IPv6 client, which always gets a peers6 key next to an empty peers
// (BEP 7). Peers are written in the format of their own family, so a peer of
// the other family, which the chain should not return, still yields
// well-formed output. It allocates nothing if dst has room.
func appendAnnounce(dst []byte, resp *bittorrent.AnnounceResponse, v6, compact, noPeerID bool) []byte {
	dst = append(dst, "d8:completei"...)
	dst = strconv.AppendUint(dst, uint64(resp.Complete), 10)
	dst = append(dst, "e10:incompletei"...)
	dst = strconv.AppendUint(dst, uint64(resp.Incomplete), 10)
	dst = append(dst, "e8:intervali"...)
	dst = strconv.AppendUint(dst, uint64(resp.Interval), 10)
	dst = append(dst, "e12:min intervali"...)
	dst = strconv.AppendUint(dst, uint64(resp.MinInterval), 10)
	dst = append(dst, 'e')
	if !compact {
		dst = append(dst, "5:peersl"...)
		for i := range resp.Peers {
			dst = appendPeerDict(dst, &resp.Peers[i], noPeerID)
		}
		return append(dst, "ee"...)
	}
	n4, n6 := 0, 0
	for i := range resp.Peers {
		if resp.Peers[i].Addr.Addr().Unmap().Is4() {
			n4++
		} else {
			n6++
		}
	}
	dst = append(dst, "5:peers"...)
	dst = bencode.AppendStringHeader(dst, 6*n4)
	for i := range resp.Peers {
		if a := resp.Peers[i].Addr.Addr().Unmap(); a.Is4() {
			ip := a.As4()
			dst = append(dst, ip[:]...)
			dst = appendPort(dst, resp.Peers[i].Addr.Port())
		}
	}
	if v6 || n6 > 0 {
		dst = append(dst, "6:peers6"...)
		dst = bencode.AppendStringHeader(dst, 18*n6)
		for i := range resp.Peers {
			if a := resp.Peers[i].Addr.Addr().Unmap(); !a.Is4() {
				ip := a.As16()
				dst = append(dst, ip[:]...)
				dst = appendPort(dst, resp.Peers[i].Addr.Port())
			}
		}
	}
	return append(dst, 'e')
}

func appendPort(dst []byte, port uint16) []byte {
	return binary.BigEndian.AppendUint16(dst, port)
}

// appendPeerDict appends one peer in the original, non-compact format.
func appendPeerDict(dst []byte, p *bittorrent.Peer, noPeerID bool) []byte {
	var buf [64]byte // longest textual IPv6 address is 45 bytes
	ip := p.Addr.Addr().Unmap().WithZone("").AppendTo(buf[:0])
	dst = append(dst, "d2:ip"...)
	dst = bencode.AppendBytes(dst, ip)
	if !noPeerID {
		dst = append(dst, "7:peer id20:"...)
		dst = append(dst, p.ID[:]...)
	}
	dst = append(dst, "4:porti"...)
	dst = strconv.AppendUint(dst, uint64(p.Addr.Port()), 10)
	return append(dst, "ee"...)
}

// appendScrape appends the answer to a scrape. The files dictionary is
// keyed by raw infohash, so its entries are sorted, and a hash the client
// asked for twice is written once, keeping the output valid bencode. It
// reorders resp.Files in place and allocates nothing if dst has room.
func appendScrape(dst []byte, resp *bittorrent.ScrapeResponse) []byte {
	slices.SortStableFunc(resp.Files, func(a, b bittorrent.Scrape) int {
		return bytes.Compare(a.InfoHash[:], b.InfoHash[:])
	})
	dst = append(dst, "d5:filesd"...)
	for i := range resp.Files {
		f := &resp.Files[i]
		if i > 0 && f.InfoHash == resp.Files[i-1].InfoHash {
			continue
		}
		dst = appendScrapeEntry(dst, f)
	}
	return append(dst, "ee"...)
}

// HTTP response heads.
const (
	status200 = "200 OK"
	status400 = "400 Bad Request"
	status404 = "404 Not Found"
	status405 = "405 Method Not Allowed"
	status505 = "505 HTTP Version Not Supported"
)

// dateLayout is the IMF-fixdate format of the Date header (RFC 9110).
const dateLayout = "Mon, 02 Jan 2006 15:04:05 GMT"

// connHeader says what a response tells the client about the connection.
type connHeader uint8

const (
	connDefault   connHeader = iota // HTTP/1.1 keep-alive: say nothing
	connClose                       // Connection: close
	connKeepAlive                   // HTTP/1.0 keep-alive: Connection: keep-alive
)

// head describes one response's status line and headers.
type head struct {
	minor      int
	status     string
	conn       connHeader
	allow      bool // Allow: GET, HEAD (405 only)
	contentLen int
	date       []byte
	// stream leaves out Content-Length: the body is sent as it is made and
	// ends when the connection closes (conn must be connClose).
	stream bool
	// gzip says the body is gzipped (Content-Encoding: gzip).
	gzip bool
}

// appendHead appends the status line and headers of a response.
func appendHead(dst []byte, h head) []byte {
	if h.minor == 0 {
		dst = append(dst, "HTTP/1.0 "...)
	} else {
		dst = append(dst, "HTTP/1.1 "...)
	}
	dst = append(dst, h.status...)
	dst = append(dst, "\r\nContent-Type: text/plain"...)
	if !h.stream {
		dst = append(dst, "\r\nContent-Length: "...)
		dst = strconv.AppendInt(dst, int64(h.contentLen), 10)
	}
	if h.gzip {
		dst = append(dst, "\r\nContent-Encoding: gzip"...)
	}
	if len(h.date) > 0 {
		dst = append(dst, "\r\nDate: "...)
		dst = append(dst, h.date...)
	}
	switch h.conn {
	case connClose:
		dst = append(dst, "\r\nConnection: close"...)
	case connKeepAlive:
		dst = append(dst, "\r\nConnection: keep-alive"...)
	}
	if h.allow {
		dst = append(dst, "\r\nAllow: GET, HEAD"...)
	}
	return append(dst, "\r\n\r\n"...)
}

// dateCache formats the Date header once per second per connection.
type dateCache struct {
	sec int64
	buf []byte
}

func (d *dateCache) get(now time.Time) []byte {
	if sec := now.Unix(); sec != d.sec || d.buf == nil {
		d.buf = now.UTC().AppendFormat(d.buf[:0], dateLayout)
		d.sec = sec
	}
	return d.buf
}
