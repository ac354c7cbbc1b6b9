package http

import (
	"fmt"
	"strings"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// routeKind says which tracker action a route answers.
type routeKind uint8

const (
	routeAnnounce routeKind = iota + 1
	routeScrape
)

// maxRouteParams bounds the named segments of one route, so the captures of
// a match fit in a fixed array on the connection.
const maxRouteParams = 8

// route is one compiled announce or scrape path.
type route struct {
	pattern string
	kind    routeKind
	// segs holds the path segments after the leading '/', for routes with
	// named segments; a segment with a non-empty name is a parameter.
	segs []routeSeg
}

type routeSeg struct {
	lit  string
	name string
}

// span is the position of a captured segment in the raw path.
type span struct{ start, end int }

// router matches raw request paths to routes. Paths are compared as sent,
// without percent-decoding, so "/%61nnounce" is not "/announce": tracker
// URLs are copied verbatim from torrent files, and one spelling per route
// keeps matching cheap and unambiguous. Captured values are decoded.
type router struct {
	// static holds routes without named segments, looked up before the
	// others so a literal path always wins over a pattern.
	static map[string]*route
	params []*route
}

// newRouter compiles the configured routes, reporting the first bad one by
// its config key.
func newRouter(announce, scrape []string) (*router, error) {
	r := &router{static: map[string]*route{}}
	seen := map[string]string{} // shape -> config key that defined it
	for _, list := range []struct {
		key    string
		kind   routeKind
		routes []string
	}{{"announce_routes", routeAnnounce, announce}, {"scrape_routes", routeScrape, scrape}} {
		for i, p := range list.routes {
			key := fmt.Sprintf("%s[%d]", list.key, i)
			rt, shape, err := compileRoute(p, list.kind)
			if err != nil {
				return nil, fmt.Errorf("%s: %q %w", key, p, err)
			}
			if prev, dup := seen[shape]; dup {
				return nil, fmt.Errorf("%s: %q matches the same paths as %s", key, p, prev)
			}
			seen[shape] = key
			if rt.segs == nil {
				r.static[p] = rt
			} else {
				r.params = append(r.params, rt)
			}
		}
	}
	return r, nil
}

// compileRoute parses pattern. shape is the pattern with parameter names
// erased, so two routes that match the same paths share a shape.
func compileRoute(pattern string, kind routeKind) (rt *route, shape string, err error) {
	const want = "is not a route; want a path starting with / whose segments are literal or {name}"
	if !strings.HasPrefix(pattern, "/") {
		return nil, "", fmt.Errorf("%s", want)
	}
	rt = &route{pattern: pattern, kind: kind}
	var segs []routeSeg
	var b strings.Builder
	names := map[string]bool{}
	for _, s := range strings.Split(pattern[1:], "/") {
		b.WriteByte('/')
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && len(s) > 2 {
			name := s[1 : len(s)-1]
			for i := 0; i < len(name); i++ {
				if !isNameChar(name[i]) {
					return nil, "", fmt.Errorf("has parameter name %q; want letters, digits, _ and -", name)
				}
			}
			if names[name] {
				return nil, "", fmt.Errorf("names parameter %q twice", name)
			}
			names[name] = true
			segs = append(segs, routeSeg{name: name})
			b.WriteString("{}")
			continue
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !pathChar[c] {
				return nil, "", fmt.Errorf("%s (bad character %q)", want, c)
			}
		}
		segs = append(segs, routeSeg{lit: s})
		b.WriteString(s)
	}
	if len(names) > maxRouteParams {
		return nil, "", fmt.Errorf("has %d parameters; want at most %d", len(names), maxRouteParams)
	}
	if len(names) > 0 {
		rt.segs = segs
	}
	return rt, b.String(), nil
}

func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// match finds the route for the raw path and records where its named
// segments are in caps. It allocates nothing.
func (r *router) match(path []byte, caps *[maxRouteParams]span) (*route, bool) {
	if rt, ok := r.static[string(path)]; ok { // the conversion does not allocate
		return rt, true
	}
	if len(path) == 0 || path[0] != '/' {
		return nil, false
	}
	for _, rt := range r.params {
		if matchSegs(rt, path, caps) {
			return rt, true
		}
	}
	return nil, false
}

func matchSegs(rt *route, path []byte, caps *[maxRouteParams]span) bool {
	pos, n := 1, 0
	for i, seg := range rt.segs {
		end := pos
		for end < len(path) && path[end] != '/' {
			end++
		}
		last := i == len(rt.segs)-1
		if last != (end == len(path)) {
			return false
		}
		s := path[pos:end]
		if seg.name == "" {
			if string(s) != seg.lit {
				return false
			}
		} else {
			if len(s) == 0 || !validEscapes(s) {
				return false
			}
			caps[n] = span{pos, end}
			n++
		}
		pos = end + 1
	}
	return true
}

// routeParams builds the captured parameters of rt from path, a string the
// caller owns for good, so the values may share its memory unless they
// needed decoding.
func routeParams(rt *route, path string, caps *[maxRouteParams]span) []bittorrent.Param {
	if rt.segs == nil {
		return nil
	}
	n := 0
	for _, seg := range rt.segs {
		if seg.name != "" {
			n++
		}
	}
	ps := make([]bittorrent.Param, 0, n)
	i := 0
	for _, seg := range rt.segs {
		if seg.name == "" {
			continue
		}
		v := path[caps[i].start:caps[i].end]
		if strings.IndexByte(v, '%') >= 0 {
			v = string(unescapePath(nil, v))
		}
		ps = append(ps, bittorrent.Param{Key: seg.name, Value: v})
		i++
	}
	return ps
}

// validEscapes reports whether every '%' in s starts a valid escape.
func validEscapes(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if i+2 >= len(s) || unhex(s[i+1]) < 0 || unhex(s[i+2]) < 0 {
				return false
			}
			i += 2
		}
	}
	return true
}

// unescapePath appends the percent-decoding of s, which has valid escapes,
// to dst. '+' stays '+' in paths.
func unescapePath(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			dst = append(dst, byte((unhex(s[i+1])<<4|unhex(s[i+2]))&0xff))
			i += 2
			continue
		}
		dst = append(dst, s[i])
	}
	return dst
}
