// Package passkey admits only requests that carry a known passkey, as
// private trackers do: the key comes from a route parameter such as
// /announce/{passkey} over HTTP, or from the BEP 41 URL data path over UDP,
// and is checked against a key file that reloads when it changes.
package passkey

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/filewatch"
)

// Name is the hook's name in the `hooks` list of the config file.
const Name = "passkey"

// Failure reasons. They are held as errors so returning one does not box
// the string.
var (
	ErrMissing error = bittorrent.ClientError("missing passkey")
	ErrUnknown error = bittorrent.ClientError("unknown passkey")
)

// Config is the hook's `options`.
type Config struct {
	// File holds the keys, one per line; blank lines and lines starting
	// with # are skipped.
	File string `yaml:"file"`
	// Keys are accepted besides those in File.
	Keys []string `yaml:"keys"`
	// Param names the route parameter that carries the key.
	Param string `yaml:"param"`
	// Paths are patterns matched against the URL data path of UDP
	// announces (BEP 41), which carry no route parameters; the {Param}
	// segment is the key. Empty means ["/announce/{Param}"].
	Paths []string `yaml:"paths"`
	// Query also takes the key from the query parameter named Param.
	Query bool `yaml:"query"`
	// CheckScrapes refuses scrapes without a known key too. UDP scrapes
	// carry no URL data, so they are refused while this is on.
	CheckScrapes bool `yaml:"check_scrapes"`
	// CheckInterval is how often File is checked for changes; 0 leaves
	// reloads to SIGHUP.
	CheckInterval time.Duration `yaml:"check_interval"`
}

// DefaultConfig reads the key from {passkey}, checks scrapes and looks for
// key file changes every 5 seconds.
func DefaultConfig() Config {
	return Config{Param: "passkey", CheckScrapes: true, CheckInterval: 5 * time.Second}
}

// maxKeyLen bounds a key, so a key file line cannot be mistaken for one
// when it is something else pasted by accident.
const maxKeyLen = 256

// Validate reports the first bad value, naming its key. It does not read
// File: that happens in New, so a config can be checked anywhere.
func (c Config) Validate() error {
	if c.File == "" && len(c.Keys) == 0 {
		return errors.New("file: neither file nor keys is set; want a key file, inline keys or both")
	}
	for i, k := range c.Keys {
		if err := checkKey(k); err != nil {
			return fmt.Errorf("keys[%d]: %w", i, err) // the key itself is not repeated into logs
		}
	}
	if c.Param == "" || !isName(c.Param) {
		return fmt.Errorf("param: %q is not a parameter name; want letters, digits, _ and -", c.Param)
	}
	for i, p := range c.Paths {
		if _, err := compilePath(p, c.Param); err != nil {
			return fmt.Errorf("paths[%d]: %q %w", i, p, err)
		}
	}
	if c.CheckInterval != 0 && (c.CheckInterval < 100*time.Millisecond || c.CheckInterval > time.Hour) {
		return fmt.Errorf("check_interval: %s is out of range; want 0 (off) or 100ms to 1h", c.CheckInterval)
	}
	return nil
}

// checkKey accepts 1 to maxKeyLen printable ASCII characters other than
// the URL delimiters / ? # % and space.
func checkKey(k string) error {
	if len(k) == 0 || len(k) > maxKeyLen {
		return fmt.Errorf("has length %d; want 1 to %d", len(k), maxKeyLen)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c > '~' || c == '/' || c == '?' || c == '#' || c == '%' {
			return fmt.Errorf("has a bad character at byte %d; want printable ASCII other than space / ? # %%", i)
		}
	}
	return nil
}

func isName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// keySet is an immutable set of keys, swapped whole on reload.
type keySet map[string]struct{}

// Hook is the passkey PreHook. Safe for concurrent use; Close stops its
// file watcher.
type Hook struct {
	cfg   Config
	paths []pathPattern
	keys  atomic.Pointer[keySet]
	log   *zap.Logger

	mu    sync.Mutex // serialises loads
	watch *filewatch.Watcher
}

// New loads the keys and, with a file and a check interval, starts the
// watcher that Close stops. A key file that cannot be loaded is an error.
func New(cfg Config, log *zap.Logger) (*Hook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Hook{cfg: cfg, log: log, watch: filewatch.New(cfg.File, log)}
	paths := cfg.Paths
	if len(paths) == 0 {
		paths = []string{"/announce/{" + cfg.Param + "}"}
	}
	for _, p := range paths {
		pp, err := compilePath(p, cfg.Param)
		if err != nil {
			return nil, fmt.Errorf("paths: %q %w", p, err)
		}
		h.paths = append(h.paths, pp)
	}
	if err := h.Reload(); err != nil {
		return nil, err
	}
	if cfg.File != "" {
		// A file that fails to load is not retried until it changes again.
		h.watch.Start(cfg.CheckInterval, func() {
			if err := h.Reload(); err != nil {
				h.log.Error("passkey file changed but did not load, keeping the keys in force", zap.Error(err))
			}
		})
	}
	return h, nil
}

// HandleAnnounce refuses an announce without a known key.
func (h *Hook) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, _ *bittorrent.AnnounceResponse) error {
	return h.check(&req.Params)
}

// HandleScrape refuses a scrape without a known key when check_scrapes is
// on.
func (h *Hook) HandleScrape(_ context.Context, req *bittorrent.ScrapeRequest, _ *bittorrent.ScrapeResponse) error {
	if !h.cfg.CheckScrapes {
		return nil
	}
	return h.check(&req.Params)
}

func (h *Hook) check(p *bittorrent.Params) error {
	key, ok := h.passkey(p)
	if !ok {
		return ErrMissing
	}
	if _, ok := (*h.keys.Load())[key]; !ok {
		return ErrUnknown
	}
	return nil
}

// passkey finds the key: the route parameter (HTTP), else the first
// matching URL data path pattern (UDP), else, if enabled, the query.
func (h *Hook) passkey(p *bittorrent.Params) (string, bool) {
	for _, rp := range p.Route {
		if rp.Key == h.cfg.Param {
			return rp.Value, rp.Value != ""
		}
	}
	for _, pp := range h.paths {
		if v, ok := pp.match(p.Path); ok {
			return v, true
		}
	}
	if h.cfg.Query {
		if v, ok := p.Get(h.cfg.Param); ok && v != "" {
			return v, true
		}
	}
	return "", false
}

// Reload reads the key file again and swaps in its keys with the inline
// ones. On error the keys in force stay. Safe to call at any time,
// including while the watcher runs.
func (h *Hook) Reload() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.load()
}

// load does Reload's work with h.mu held.
func (h *Hook) load() error {
	set := make(keySet, len(h.cfg.Keys))
	for _, k := range h.cfg.Keys {
		set[k] = struct{}{}
	}
	if h.cfg.File != "" {
		// Seen before reading, so a write racing the read is seen as a
		// change on the next check and read again.
		info, err := os.Stat(h.cfg.File)
		if err != nil {
			return fmt.Errorf("passkey: %w", err)
		}
		h.watch.Seen(info)
		n, err := readKeys(h.cfg.File, set)
		if err != nil {
			return fmt.Errorf("passkey: %s: %w", h.cfg.File, err)
		}
		if n == 0 {
			// Most likely caught half-written; refusing everyone would be
			// the worse mistake.
			return fmt.Errorf("passkey: %s: no keys; keeping the %d in force", h.cfg.File, h.count())
		}
	}
	h.keys.Store(&set)
	h.log.Info("passkeys loaded", zap.String("file", h.cfg.File), zap.Int("keys", len(set)))
	return nil
}

func (h *Hook) count() int {
	if s := h.keys.Load(); s != nil {
		return len(*s)
	}
	return 0
}

// readKeys adds the keys of file to set and returns how many lines held
// a key. A bad line fails the whole file, naming its line number only.
func readKeys(file string, set keySet) (int, error) {
	data, err := os.ReadFile(file) //nolint:gosec // G304: the keys file is the operator's config
	if err != nil {
		return 0, err
	}
	n := 0
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := checkKey(line); err != nil {
			return 0, fmt.Errorf("line %d: %w", i+1, err)
		}
		set[line] = struct{}{}
		n++
	}
	return n, nil
}

// Close stops the file watcher and waits for it.
func (h *Hook) Close() error {
	h.watch.Close()
	return nil
}

// pathPattern matches a URL data path such as /announce/KEY. Segments are
// literal or {name}; the {param} one is the key.
type pathPattern struct {
	segs []string // "" marks a wildcard
	key  int      // index of the key segment
}

func compilePath(p, param string) (pathPattern, error) {
	const want = "is not a path pattern; want a path starting with / whose segments are literal or {name}, one of them {" // closed below
	if !strings.HasPrefix(p, "/") {
		return pathPattern{}, fmt.Errorf("%s%s}", want, param)
	}
	pp := pathPattern{key: -1}
	for i, s := range strings.Split(p[1:], "/") {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && len(s) > 2 {
			if s[1:len(s)-1] == param {
				if pp.key >= 0 {
					return pathPattern{}, fmt.Errorf("names {%s} twice", param)
				}
				pp.key = i
			}
			pp.segs = append(pp.segs, "")
			continue
		}
		if s == "" || strings.ContainsAny(s, "{}?#%") {
			return pathPattern{}, fmt.Errorf("%s%s}", want, param)
		}
		pp.segs = append(pp.segs, s)
	}
	if pp.key < 0 {
		return pathPattern{}, fmt.Errorf("has no {%s} segment", param)
	}
	return pp, nil
}

// match returns the key segment of path, percent-decoded, if path fits.
func (pp pathPattern) match(path string) (string, bool) {
	if !strings.HasPrefix(path, "/") {
		return "", false
	}
	rest := path[1:]
	var key string
	for i, lit := range pp.segs {
		seg, after, more := strings.Cut(rest, "/")
		if more != (i < len(pp.segs)-1) {
			return "", false
		}
		if lit == "" {
			if seg == "" {
				return "", false
			}
		} else if seg != lit {
			return "", false
		}
		if i == pp.key {
			key = seg
		}
		rest = after
	}
	if strings.IndexByte(key, '%') >= 0 {
		k, err := url.PathUnescape(key)
		if err != nil || k == "" {
			return "", false
		}
		key = k
	}
	return key, true
}
