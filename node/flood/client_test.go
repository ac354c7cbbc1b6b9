//go:build flood

package flood

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// announce is one announce a client sends.
type announce struct {
	ih     [20]byte
	peerID [20]byte
	port   uint16
	left   uint64
}

// randomAnnounce is a flood's announce: a new torrent, a new peer.
func randomAnnounce(rng *rand.Rand) announce {
	var a announce
	for i := range a.ih {
		a.ih[i] = byte(rng.Uint32())
	}
	copy(a.peerID[:], "-FL0001-")
	for i := 8; i < 20; i++ {
		a.peerID[i] = byte('a' + rng.IntN(26))
	}
	a.port = uint16(1 + rng.IntN(65535))
	a.left = 1
	return a
}

// result is what a tracker answered: ok, a failure reason, or an error
// (a timeout, a closed connection).
type result struct {
	reason string
	peers  []netip.AddrPort
	err    error
}

// errTimeout is an announce that got no answer in time.
var errTimeout = errors.New("no answer in time")

// udpClient speaks BEP 15 from one socket.
type udpClient struct {
	conn      *net.UDPConn
	local     string
	cid       uint64
	connected time.Time // when cid was given: a client uses it for a minute
	tid       uint32
	buf       [2048]byte
}

// dialUDP opens a socket bound to local (an address of 127.0.0.0/8) and
// connects it to the tracker at remote.
func dialUDP(local, remote string) (*udpClient, error) {
	raddr, err := net.ResolveUDPAddr("udp", remote)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(local)}, raddr)
	if err != nil {
		return nil, err
	}
	u := &udpClient{conn: c, local: local, tid: rand.Uint32()}
	if err := u.connect(); err != nil {
		c.Close()
		return nil, err
	}
	return u, nil
}

// connect gets a connection ID, trying again as a client does.
func (u *udpClient) connect() error {
	var req [16]byte
	binary.BigEndian.PutUint64(req[0:], 0x41727101980)
	for try := range 5 {
		u.tid++
		binary.BigEndian.PutUint32(req[12:], u.tid)
		if _, err := u.conn.Write(req[:]); err != nil {
			return err
		}
		action, body, err := u.read(time.Duration(try+1) * time.Second)
		if errors.Is(err, errTimeout) {
			continue
		}
		if err != nil || action != 0 || len(body) < 8 {
			return fmt.Errorf("connect from %s: action %d: %w", u.local, action, errors.Join(err, errors.New("not a connect answer")))
		}
		u.cid, u.connected = binary.BigEndian.Uint64(body), time.Now()
		return nil
	}
	return fmt.Errorf("connect from %s: %w", u.local, errTimeout)
}

// read returns the next answer to the current transaction.
func (u *udpClient) read(wait time.Duration) (action uint32, body []byte, err error) {
	deadline := time.Now().Add(wait)
	for {
		if err := u.conn.SetReadDeadline(deadline); err != nil {
			return 0, nil, err
		}
		n, err := u.conn.Read(u.buf[:])
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return 0, nil, errTimeout
		}
		if err != nil {
			return 0, nil, err
		}
		if n < 8 || binary.BigEndian.Uint32(u.buf[4:]) != u.tid {
			continue // a late answer to an earlier try
		}
		return binary.BigEndian.Uint32(u.buf[:4]), u.buf[8:n], nil
	}
}

// announce sends a and waits for the answer, trying again after wait as a
// client does when a datagram is lost. A connection ID older than a
// minute is renewed first (BEP 15).
func (u *udpClient) announce(a announce, wait time.Duration, tries int) result {
	if time.Since(u.connected) > time.Minute {
		if err := u.connect(); err != nil {
			return result{err: err}
		}
	}
	var req [98]byte
	binary.BigEndian.PutUint64(req[0:], u.cid)
	binary.BigEndian.PutUint32(req[8:], 1)
	copy(req[16:], a.ih[:])
	copy(req[36:], a.peerID[:])
	binary.BigEndian.PutUint64(req[64:], a.left)
	binary.BigEndian.PutUint32(req[92:], 0xffffffff) // numwant -1: the default
	binary.BigEndian.PutUint16(req[96:], a.port)
	for range tries {
		u.tid++
		binary.BigEndian.PutUint32(req[12:], u.tid)
		if _, err := u.conn.Write(req[:]); err != nil {
			return result{err: err}
		}
		action, body, err := u.read(wait)
		switch {
		case errors.Is(err, errTimeout):
			continue
		case err != nil:
			return result{err: err}
		case action == 3:
			return result{reason: string(body)}
		case action != 1 || len(body) < 12:
			return result{err: fmt.Errorf("answer with action %d and %d bytes", action, len(body))}
		}
		return result{peers: compactPeers(body[12:])}
	}
	return result{err: errTimeout}
}

func (u *udpClient) close() { _ = u.conn.Close() }

// httpClient speaks HTTP/1.1 with keep-alive over one connection from a
// local address, reconnecting when the tracker closes it.
type httpClient struct {
	local, remote string
	conn          net.Conn
	br            *bufio.Reader
	req           []byte
}

func newHTTPClient(local, remote string) *httpClient {
	return &httpClient{local: local, remote: remote}
}

func (h *httpClient) dial() error {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(h.local)}}
	c, err := d.Dial("tcp", h.remote)
	if err != nil {
		return err
	}
	h.conn, h.br = c, bufio.NewReaderSize(c, 4096)
	return nil
}

// announce asks for a and reads the answer, with numwant as given (0:
// the tracker's default).
func (h *httpClient) announce(a announce, numwant int) result {
	h.req = append(h.req[:0], "GET /announce?compact=1&info_hash="...)
	h.req = append(h.req, url.QueryEscape(string(a.ih[:]))...)
	h.req = append(h.req, "&peer_id="...)
	h.req = append(h.req, url.QueryEscape(string(a.peerID[:]))...)
	h.req = strconv.AppendUint(append(h.req, "&port="...), uint64(a.port), 10)
	h.req = strconv.AppendUint(append(h.req, "&left="...), a.left, 10)
	if numwant > 0 {
		h.req = strconv.AppendInt(append(h.req, "&numwant="...), int64(numwant), 10)
	}
	h.req = append(h.req, " HTTP/1.1\r\nHost: tracker\r\n\r\n"...)
	for try := range 2 { // once more on a connection the tracker had closed
		if h.conn == nil {
			if err := h.dial(); err != nil {
				return result{err: err}
			}
		}
		_ = h.conn.SetDeadline(time.Now().Add(10 * time.Second))
		body, err := h.roundTrip()
		if err != nil {
			h.close()
			if try == 0 {
				continue
			}
			return result{err: err}
		}
		if reason, ok := failureReason(body); ok {
			return result{reason: reason}
		}
		return result{peers: bencodedPeers(body)}
	}
	return result{err: errors.New("unreachable")}
}

// roundTrip writes the request and reads one response's body.
func (h *httpClient) roundTrip() ([]byte, error) {
	if _, err := h.conn.Write(h.req); err != nil {
		return nil, err
	}
	status, err := h.br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		return nil, fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	length, closing := -1, false
	for {
		line, err := h.br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		line = strings.TrimSpace(line)
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		switch strings.ToLower(k) {
		case "content-length":
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		case "connection":
			closing = strings.EqualFold(strings.TrimSpace(v), "close")
		}
	}
	if length < 0 {
		return nil, errors.New("no content-length")
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(h.br, body); err != nil {
		return nil, err
	}
	if closing {
		h.close()
	}
	return body, nil
}

func (h *httpClient) close() {
	if h.conn != nil {
		_ = h.conn.Close()
		h.conn, h.br = nil, nil
	}
}

// failureReason returns a bencoded answer's failure reason, if it is one.
func failureReason(body []byte) (string, bool) {
	const key = "14:failure reason"
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return "", false
	}
	s, ok := bencodedString(body[i+len(key):])
	return string(s), ok
}

// bencodedPeers returns the compact IPv4 peers of an announce answer.
func bencodedPeers(body []byte) []netip.AddrPort {
	i := bytes.Index(body, []byte("5:peers"))
	if i < 0 {
		return nil
	}
	s, _ := bencodedString(body[i+len("5:peers"):])
	return compactPeers(s)
}

// bencodedString reads a bencoded byte string at the start of b.
func bencodedString(b []byte) ([]byte, bool) {
	colon := bytes.IndexByte(b, ':')
	if colon < 0 {
		return nil, false
	}
	n, err := strconv.Atoi(string(b[:colon]))
	if err != nil || n < 0 || colon+1+n > len(b) {
		return nil, false
	}
	return b[colon+1 : colon+1+n], true
}

// compactPeers decodes BEP 23 compact IPv4 peers.
func compactPeers(b []byte) []netip.AddrPort {
	var out []netip.AddrPort
	for ; len(b) >= 6; b = b[6:] {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), binary.BigEndian.Uint16(b[4:6])))
	}
	return out
}
