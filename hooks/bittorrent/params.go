package bittorrent

import (
	"net/url"
	"strings"
)

// Param is one named value, such as a route parameter.
type Param struct {
	Key   string
	Value string
}

// Params carries the parameters of a request that the core fields do not:
// the raw query (parsed only when a hook asks), parameters captured by the
// matched HTTP route, and the Authorization header. For UDP they come from
// the BEP 41 URL data option. The zero value is empty and costs nothing.
type Params struct {
	// Path is the request path, or the path part of BEP 41 URL data.
	Path string
	// Query is the raw query string, still percent-encoded, without '?'.
	Query string
	// Route holds the values captured by named route segments such as
	// {passkey} in /announce/{passkey}.
	Route []Param
	// Authorization is the HTTP Authorization header, if any.
	Authorization string
}

// Get returns the value of key, looking first at route parameters and then
// at the query. Query values are unescaped; a value that fails to unescape
// is treated as absent.
func (p Params) Get(key string) (string, bool) {
	for _, rp := range p.Route {
		if rp.Key == key {
			return rp.Value, true
		}
	}
	q := p.Query
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k != key {
			if !strings.ContainsAny(k, "%+") {
				continue
			}
			uk, err := url.QueryUnescape(k)
			if err != nil || uk != key {
				continue
			}
		}
		uv, err := url.QueryUnescape(v)
		if err != nil {
			return "", false
		}
		return uv, true
	}
	return "", false
}
