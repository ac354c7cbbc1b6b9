package approval

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// ClientName is client_approval's name in the `hooks` list of the config.
const ClientName = "client_approval"

// Client is the client_approval PreHook: it refuses announces whose peer_id
// starts (allow mode) with none of, or (deny mode) with one of, the listed
// prefixes. Safe for concurrent use.
type Client struct {
	mode                Mode
	listHook[prefixSet] // Reload and Close
}

// NewClient loads the list and, if it has a file and a check interval,
// starts watching the file; Close stops the watcher.
func NewClient(cfg ClientConfig, log *zap.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := newListHook(ClientName, Config(cfg), func() builder[prefixSet] { return &prefixBuilder{m: map[string]struct{}{}} }, log)
	if err != nil {
		return nil, err
	}
	return &Client{mode: cfg.Mode, listHook: l}, nil
}

// HandleAnnounce refuses the announce if its peer_id is not allowed.
func (c *Client) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, _ *bittorrent.AnnounceResponse) error {
	if c.src.current().match(req.PeerID[:]) == (c.mode == Allow) {
		return nil
	}
	return bittorrent.ClientError(fmt.Sprintf("client %s is not allowed", showPrefix(req.PeerID[:8])))
}

// HandleScrape does nothing: a scrape carries no peer_id.
func (c *Client) HandleScrape(context.Context, *bittorrent.ScrapeRequest, *bittorrent.ScrapeResponse) error {
	return nil
}

// prefixSet is an immutable set of peer_id prefixes, looked up by each of
// the distinct prefix lengths in turn, so a lookup costs one map probe per
// length however many prefixes there are.
type prefixSet struct {
	prefixes map[string]struct{}
	lens     []int // distinct prefix lengths, ascending
}

// match reports whether id starts with one of the prefixes.
func (p *prefixSet) match(id []byte) bool {
	for _, n := range p.lens {
		if n > len(id) {
			return false
		}
		if _, ok := p.prefixes[string(id[:n])]; ok { // no allocation: map index by converted bytes
			return true
		}
	}
	return false
}

type prefixBuilder struct {
	m map[string]struct{}
}

func (b *prefixBuilder) add(entry []byte) error {
	p, err := parsePrefix(entry)
	if err != nil {
		return err
	}
	b.m[p] = struct{}{}
	return nil
}

func (b *prefixBuilder) build() (*prefixSet, int) {
	s := &prefixSet{prefixes: b.m}
	for p := range b.m {
		if !slices.Contains(s.lens, len(p)) {
			s.lens = append(s.lens, len(p))
		}
	}
	slices.Sort(s.lens)
	return s, len(b.m)
}

// parsePrefix decodes a peer_id prefix: printable ASCII other than space,
// # and %, with any byte writable as %XX (hex), 1 to 20 bytes long.
func parsePrefix(entry []byte) (string, error) {
	var out []byte
	for i := 0; i < len(entry); i++ {
		c := entry[i]
		switch {
		case c == '%':
			if i+2 >= len(entry) {
				return "", fmt.Errorf("%s: %% at byte %d is not followed by two hex digits", quote(entry), i)
			}
			hi, ok1 := unhex(entry[i+1])
			lo, ok2 := unhex(entry[i+2])
			if !ok1 || !ok2 {
				return "", fmt.Errorf("%s: %% at byte %d is not followed by two hex digits", quote(entry), i)
			}
			out = append(out, hi<<4|lo)
			i += 2
		case c <= ' ' || c >= 0x7f || c == '#':
			return "", fmt.Errorf("%s: byte %d (0x%02x) must be written as %%%02X", quote(entry), i, c, c)
		default:
			out = append(out, c)
		}
	}
	switch {
	case len(out) == 0:
		return "", fmt.Errorf("%s: empty prefix; want 1 to 20 bytes of peer_id", quote(entry))
	case len(out) > len(bittorrent.PeerID{}):
		return "", fmt.Errorf("%s: %d bytes is longer than a peer_id; want 1 to 20", quote(entry), len(out))
	}
	return string(out), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// showPrefix writes peer_id bytes in the syntax parsePrefix reads, so a
// failure reason or log line can be pasted into the list.
func showPrefix(p []byte) string {
	var b strings.Builder
	for _, c := range p {
		if c <= ' ' || c >= 0x7f || c == '#' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// quote shows an entry in an error message, shortened if it is long.
func quote(entry []byte) string {
	if len(entry) > 80 {
		return fmt.Sprintf("%q…", entry[:80])
	}
	return fmt.Sprintf("%q", entry)
}
