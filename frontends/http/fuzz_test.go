package http

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	nethttp "net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// FuzzParseQuery checks that the announce and scrape parsers never panic,
// fail only with client errors, and agree with Params.Get, the way hooks
// read the same query: a hook must never see a different info_hash,
// peer_id or port than the announce it is checking.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"", baseQuery, baseQuery + "&event=started&numwant=50&compact=0&no_peer_id=1&key=abc",
		"info_hash=" + escapeAll(testHash[:]) + "&info_hash=abcdefghijklmnopqrst",
		"info_hash=%zz", "info_hash=%4", "port=99999", "left=-1", "info%5Fhash=abcdefghijklmnopqrst",
		"&&&=&==", "peer_id=++++++++++++++++++++&port=1&left=0&info_hash=aaaaaaaaaaaaaaaaaaaa",
		"key=" + strings.Repeat("%41", 70), "event=%73tarted",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		var req bittorrent.AnnounceRequest
		port, err := parseAnnounce(q, &req)
		if err != nil {
			var ce bittorrent.ClientError
			if !errors.As(err, &ce) {
				t.Fatalf("parseAnnounce(%q) = %v, not a ClientError", q, err)
			}
		} else {
			if port == 0 {
				t.Fatalf("parseAnnounce(%q) accepted port 0", q)
			}
			p := bittorrent.Params{Query: string(q)}
			if v, ok := p.Get("info_hash"); !ok || v != string(req.InfoHash[:]) {
				t.Fatalf("info_hash: parser %x, Params.Get %x (%v)", req.InfoHash, v, ok)
			}
			if v, ok := p.Get("peer_id"); !ok || v != string(req.PeerID[:]) {
				t.Fatalf("peer_id: parser %x, Params.Get %x (%v)", req.PeerID, v, ok)
			}
			if v, ok := p.Get("port"); !ok {
				t.Fatalf("port: Params.Get found none, parser %d", port)
			} else if n, err := strconv.ParseUint(v, 10, 16); err != nil || uint16(n) != port {
				t.Fatalf("port: parser %d, Params.Get %q", port, v)
			}
		}
		hashes, err := parseScrape(q, nil)
		if err != nil {
			var ce bittorrent.ClientError
			if !errors.As(err, &ce) {
				t.Fatalf("parseScrape(%q) = %v, not a ClientError", q, err)
			}
		} else if len(hashes) > bytes.Count(q, []byte("=")) {
			t.Fatalf("parseScrape(%q) returned %d hashes", q, len(hashes))
		}
	})
}

// FuzzReadRequest checks the request reader: it never panics, a request it
// accepts ends in a blank line within the input, is accepted identically
// on its own, and none of its proper prefixes is accepted (so no two
// readings of one byte stream can disagree on where a request ends).
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET /announce?" + baseQuery + " HTTP/1.1\r\nHost: t\r\nUser-Agent: x\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"\r\nHEAD http://h/a?b HTTP/1.1\r\nHost: h\r\nConnection: close, keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nX-Forwarded-For: 1.1.1.1\r\nAuthorization: x\r\n\r\n",
		"GET / HTTP/1.1\nHost: t\n\n",
		"GET / HTTP/1.1\r\nHost: t\r\n x\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: t\r\n\r\n0\r\n\r\n",
		"GET / HTTP/2.0\r\n\r\n", "GET /\x80 HTTP/1.1\r\nHost: t\r\n\r\n", "\r\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var req request
		n, err := parseRequest(in, "x-forwarded-for", &req)
		if err != nil {
			var se *statusError
			if !errors.Is(err, errNeedMore) && !errors.As(err, &se) {
				t.Fatalf("parseRequest(%q) = %v", in, err)
			}
			return
		}
		if n < 4 || n > len(in) || string(in[n-4:n]) != "\r\n\r\n" {
			t.Fatalf("parseRequest(%q) consumed %d bytes, not ending in a blank line", in, n)
		}
		if len(req.method) == 0 || len(req.path) == 0 || req.minor > 1 || req.nRealIP > maxRealIPLines {
			t.Fatalf("parseRequest(%q) gave %+v", in, req)
		}
		if bytes.ContainsAny(req.pathQuery, " \r\n") {
			t.Fatalf("target %q holds whitespace", req.pathQuery)
		}
		var again request
		if n2, err := parseRequest(in[:n], "x-forwarded-for", &again); err != nil || n2 != n {
			t.Fatalf("the request alone parses as %d, %v; want %d", n2, err, n)
		}
		if _, err := parseRequest(in[:n-1], "x-forwarded-for", &again); err == nil {
			t.Fatalf("a proper prefix of %q was accepted", in[:n])
		}
	})
}

// scriptConn is a net.Conn whose input is a fixed script, handed out at
// most chunk bytes per Read so that requests arrive in pieces, and whose
// output is collected. The connection handler runs on it synchronously.
type scriptConn struct {
	in    []byte
	chunk int
	out   bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *scriptConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *scriptConn) Close() error                { return nil }
func (c *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6969}
}
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
}
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzConn feeds arbitrary bytes, in arbitrary pieces, through a whole
// connection handler and checks that it never panics, that everything it
// writes is a sequence of well-formed HTTP responses whose 200 bodies are
// canonical bencode, and that it never answers more requests than the
// input holds.
func FuzzConn(f *testing.F) {
	f.Add(uint8(255), []byte("GET /announce?"+baseQuery+" HTTP/1.1\r\nHost: t\r\n\r\nGET /scrape HTTP/1.1\r\nHost: t\r\n\r\n"))
	f.Add(uint8(7), []byte("GET /announce?"+baseQuery+"&compact=0 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /x HTTP/1.1\r\n\r\n"))
	f.Add(uint8(1), []byte("GET /k/announce?"+baseQuery+" HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: ::1, 10.0.0.1\r\n\r\n"))
	f.Add(uint8(30), []byte("POST /announce HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"))
	f.Add(uint8(100), []byte(strings.Repeat("A", 600)))
	f.Fuzz(func(t *testing.T, chunk uint8, in []byte) {
		// HEAD answers carry no body, which a reader cannot tell from the
		// bytes alone; HEAD is covered by the end-to-end tests instead.
		in = bytes.ReplaceAll(in, []byte("HEAD"), []byte("GETX"))
		cfg := DefaultConfig()
		cfg.MaxRequestBytes = 512
		cfg.TrustedProxies = []string{"127.0.0.1"}
		cfg.AnnounceRoutes = []string{"/announce", "/{key}/announce"}
		tr := &fakeTracker{peers: []bittorrent.Peer{peer('a', "10.0.0.1:1"), peer('b', "[::2]:2")}}
		s, err := New(cfg, tr, nil, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		sc := &scriptConn{in: in, chunk: int(chunk) + 1}
		c := newConn(s, sc)
		if ok, refused := s.track(c); !ok {
			t.Fatalf("track failed (refused: %q)", refused)
		}
		c.serve()
		out := sc.out.Bytes()
		br := bufio.NewReader(bytes.NewReader(out))
		responses := 0
		for {
			if _, err := br.Peek(1); err == io.EOF {
				break
			}
			resp, err := nethttp.ReadResponse(br, &nethttp.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("malformed response in %q: %v", out, err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("bad body in %q: %v", out, err)
			}
			if resp.StatusCode == 200 {
				if _, err := (bencode.Decoder{SortedKeys: true}).Decode(body); err != nil {
					t.Fatalf("200 body %q is not canonical bencode: %v", body, err)
				}
			}
			responses++
		}
		if lines := bytes.Count(in, []byte("\n")); responses > lines && responses > 1 {
			t.Fatalf("%d responses to input with %d line ends", responses, lines)
		}
		if tr.afterCount() > tr.announceCount() {
			t.Fatalf("AfterAnnounce called %d times for %d announces", tr.afterCount(), tr.announceCount())
		}
	})
}
