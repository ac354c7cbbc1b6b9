package loadgen

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// httpDriver sends GET requests over keep-alive connections, one per
// client at most.
type httpDriver struct {
	cfg    *Config
	st     *stats
	tgt    target
	ids    []int // the global indexes of its clients
	client *http.Client
}

// maxBody bounds the answer read: a compact announce of 200 IPv6 peers
// is under 4 KiB.
const maxBody = 64 << 10

func newHTTPDriver(tgt target, ids []int, cfg *Config, st *stats) *httpDriver {
	tr := &http.Transport{
		Proxy:               nil, // measure the tracker, not a proxy
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
		MaxIdleConnsPerHost: cfg.Concurrency,
		MaxConnsPerHost:     cfg.Concurrency,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &httpDriver{cfg: cfg, st: st, tgt: tgt, ids: ids, client: &http.Client{Transport: tr, Timeout: cfg.Timeout}}
}

// drive runs a goroutine per client, each with its own keep-alive
// connection.
func (d *httpDriver) drive(ctx context.Context, p *plan) {
	var wg sync.WaitGroup
	for _, id := range d.ids {
		wg.Go(func() { sessionLoop(ctx, d.session(), p, d.cfg.Seed, id) })
	}
	wg.Wait()
}

func (d *httpDriver) session() *httpSession {
	return &httpSession{d: d, url: make([]byte, 0, 512), body: make([]byte, 0, 4096)}
}

// Close closes idle connections.
func (d *httpDriver) Close() error {
	d.client.CloseIdleConnections()
	return nil
}

type httpSession struct {
	d    *httpDriver
	url  []byte
	body []byte
}

func (c *httpSession) announce(ctx context.Context, a *announce, start time.Time) (outcome, bool) {
	u := append(c.url[:0], c.d.tgt.announce...)
	u = append(u, "info_hash="...)
	u = appendEscaped(u, a.infoHash[:])
	u = append(u, "&peer_id="...)
	u = appendEscaped(u, a.peerID[:])
	u = append(u, "&port="...)
	u = strconv.AppendUint(u, uint64(a.port), 10)
	u = append(u, "&uploaded=0&downloaded=0&left="...)
	u = strconv.AppendUint(u, a.left, 10)
	u = append(u, "&compact=1&key="...)
	u = strconv.AppendUint(u, uint64(a.key), 16)
	if a.numWant >= 0 {
		u = append(u, "&numwant="...)
		u = strconv.AppendInt(u, int64(a.numWant), 10)
	}
	if a.event == eventStarted {
		u = append(u, "&event=started"...)
	}
	c.url = u
	return c.do(ctx, actAnnounce, start)
}

func (c *httpSession) scrape(ctx context.Context, hashes [][20]byte, start time.Time) (outcome, bool) {
	u := append(c.url[:0], c.d.tgt.scrape...)
	for i := range hashes {
		if i > 0 {
			u = append(u, '&')
		}
		u = append(u, "info_hash="...)
		u = appendEscaped(u, hashes[i][:])
	}
	c.url = u
	return c.do(ctx, actScrape, start)
}

// do sends the request in c.url, records its outcome and returns it.
func (c *httpSession) do(ctx context.Context, a action, start time.Time) (outcome, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, string(c.url), nil)
	if err != nil {
		c.d.st.record(a, netError, 0, 0)
		return netError, true
	}
	resp, err := c.d.client.Do(req)
	if err == nil {
		c.body, err = readBody(c.body[:0], resp.Body)
		_ = resp.Body.Close()
	}
	at := time.Now()
	if ctx.Err() != nil {
		return netError, false
	}
	if err != nil {
		o := netError
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			o = timeout
		}
		c.d.st.record(a, o, 0, 0)
		return o, true
	}
	failure, entries, perr := scanReply(c.body, a)
	o := ok
	switch {
	case failure:
		o = trackerError
	case perr != nil || resp.StatusCode != http.StatusOK:
		o = malformed
	}
	c.d.st.record(a, o, at.Sub(start), entries)
	return o, true
}

// readBody appends up to maxBody bytes of r to b, reading to the end so
// the connection can be reused.
func readBody(b []byte, r io.Reader) ([]byte, error) {
	for len(b) < maxBody {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
	return b, errors.New("answer longer than 64 KiB")
}

// appendEscaped percent-encodes raw bytes for a query string, leaving
// only unreserved characters as they are.
func appendEscaped(b, raw []byte) []byte {
	const hexDigits = "0123456789ABCDEF"
	for _, c := range raw {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
	}
	return b
}

// errBencode marks an answer that is not a bencoded dictionary.
var errBencode = errors.New("not a bencoded dictionary")

// scanReply reads the top-level keys of a bencoded answer to a: whether it
// carries a failure reason and, for an announce, how many peers (compact
// IPv4 and IPv6, or a list), for a scrape, how many files.
func scanReply(b []byte, a action) (failure bool, entries int, err error) {
	if len(b) == 0 || b[0] != 'd' {
		return false, 0, errBencode
	}
	i := 1
	for {
		if i >= len(b) {
			return false, 0, errBencode
		}
		if b[i] == 'e' {
			if i+1 != len(b) {
				return false, 0, errBencode
			}
			return failure, entries, nil
		}
		ks, ke, err := bstring(b, i)
		if err != nil {
			return false, 0, err
		}
		vs := ke
		ve, err := skipValue(b, vs, 0)
		if err != nil {
			return false, 0, err
		}
		switch key := string(b[ks:ke]); {
		case key == "failure reason":
			failure = true
		case a == actAnnounce && (key == "peers" || key == "peers6"):
			size := 6
			if key == "peers6" {
				size = 18
			}
			if b[vs] == 'l' {
				entries += countItems(b, vs)
			} else if s, e, err := bstring(b, vs); err == nil {
				entries += (e - s) / size
			}
		case a == actScrape && key == "files" && b[vs] == 'd':
			entries += countItems(b, vs) / 2
		}
		i = ve
	}
}

// bstring decodes the string at b[i:], "len:bytes", returning the bounds
// of its bytes.
func bstring(b []byte, i int) (start, end int, err error) {
	n := 0
	j := i
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		n = n*10 + int(b[j]-'0')
		if n > len(b) {
			return 0, 0, errBencode
		}
	}
	if j == i || j >= len(b) || b[j] != ':' || j+1+n > len(b) {
		return 0, 0, errBencode
	}
	return j + 1, j + 1 + n, nil
}

// skipValue returns the end of the value at b[i:].
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) || depth > 32 {
		return 0, errBencode
	}
	switch c := b[i]; {
	case c == 'i':
		for j := i + 1; j < len(b); j++ {
			if b[j] == 'e' {
				return j + 1, nil
			}
		}
		return 0, errBencode
	case c == 'l' || c == 'd':
		j := i + 1
		for {
			if j >= len(b) {
				return 0, errBencode
			}
			if b[j] == 'e' {
				return j + 1, nil
			}
			var err error
			if j, err = skipValue(b, j, depth+1); err != nil {
				return 0, err
			}
		}
	case c >= '0' && c <= '9':
		_, e, err := bstring(b, i)
		return e, err
	}
	return 0, errBencode
}

// countItems counts the values in the list or dictionary at b[i:], which
// skipValue has already checked.
func countItems(b []byte, i int) int {
	n := 0
	for j := i + 1; j < len(b) && b[j] != 'e'; n++ {
		var err error
		if j, err = skipValue(b, j, 1); err != nil {
			return n
		}
	}
	return n
}
