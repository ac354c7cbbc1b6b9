package http

import (
	"bytes"
	"errors"
)

// maxRealIPLines bounds how many times the real-IP header may repeat in one
// request; more is refused rather than silently cut.
const maxRealIPLines = 8

// request is the part of an HTTP request the tracker needs. Its slices point
// into the connection's read buffer and are valid only until the next
// request is read.
type request struct {
	method []byte
	// pathQuery is the path and query as sent ("/announce?info_hash=..."),
	// path and query are its parts (query without '?').
	pathQuery   []byte
	path, query []byte
	// minor is the HTTP/1.x minor version, 0 or 1.
	minor     int
	keepAlive bool
	// hasBody is set when Content-Length is non-zero or Transfer-Encoding is
	// present: the request carries a body the server will not read.
	hasBody bool
	// auth is the Authorization header; hasAuth tells absent from empty.
	auth    []byte
	hasAuth bool
	realIP  [maxRealIPLines][]byte
	nRealIP int
	// gzip is set when Accept-Encoding accepts gzip (only full scrapes,
	// the one large answer, are compressed).
	gzip bool
}

// errNeedMore means the buffer holds the start of a request but not yet the
// end of its headers.
var errNeedMore = errors.New("http: incomplete request")

// statusError is a malformed request, answered with status and a closed
// connection.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func badRequest(msg string) error { return &statusError{status: 400, msg: msg} }

var (
	errBareLF        = badRequest("line not ended by CRLF")
	errRequestLine   = badRequest("malformed request line")
	errMethod        = badRequest("malformed method")
	errTarget        = badRequest("malformed request target")
	errVersion       = badRequest("malformed HTTP version")
	errHeaderName    = badRequest("malformed header name")
	errHeaderValue   = badRequest("malformed header value")
	errObsFold       = badRequest("obsolete header line folding")
	errMissingHost   = badRequest("missing Host header")
	errDuplicate     = badRequest("repeated Host, Content-Length or Authorization header")
	errContentLength = badRequest("malformed Content-Length")
	errTooManyRealIP = badRequest("real-IP header repeated too often")
	errHTTPVersion   = &statusError{status: 505, msg: "HTTP version not supported"}
)

// parseRequest parses one request line and header block from the start of
// b into req and returns its length. It returns errNeedMore if b ends before
// the blank line, and a *statusError for malformed input. realIPHeader is
// the lower-case name of the real-IP header. It never allocates.
//
// Framing is strict because a proxy in front and this server must agree on
// where each request ends, or a request hidden inside another could reach
// the tracker with headers the proxy never vetted (request smuggling). Every
// line must end in CRLF: a bare LF or CR anywhere is refused rather than
// read as a line break, obsolete line folding is refused, and a request
// announcing a body (Content-Length other than 0, any Transfer-Encoding) is
// answered and the connection closed without reading the body, so no bytes
// of a body are ever taken as the next request.
func parseRequest(b []byte, realIPHeader string, req *request) (int, error) {
	*req = request{}
	pos := 0
	// RFC 9112 section 2.2: ignore empty lines before the request line.
	for len(b)-pos >= 2 && b[pos] == '\r' && b[pos+1] == '\n' {
		pos += 2
	}
	line, next, err := nextLine(b, pos)
	if err != nil {
		return 0, err
	}
	if err := parseRequestLine(line, req); err != nil {
		return 0, err
	}
	pos = next
	var host, contentLength bool
	var connClose, connKeepAlive bool
	for {
		line, next, err = nextLine(b, pos)
		if err != nil {
			return 0, err
		}
		pos = next
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return 0, errObsFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return 0, errHeaderName
		}
		name := line[:colon]
		for _, c := range name {
			if !tokenChar[c] { // also refuses space before the colon
				return 0, errHeaderName
			}
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return 0, errHeaderValue
			}
		}
		switch {
		case equalFold(name, "host"):
			if host {
				return 0, errDuplicate
			}
			host = true
		case equalFold(name, "connection"):
			c, k := connectionTokens(value)
			connClose = connClose || c
			connKeepAlive = connKeepAlive || k
		case equalFold(name, "content-length"):
			if contentLength {
				return 0, errDuplicate
			}
			contentLength = true
			if len(value) == 0 {
				return 0, errContentLength
			}
			for _, c := range value {
				if c < '0' || c > '9' {
					return 0, errContentLength
				}
				if c != '0' {
					req.hasBody = true
				}
			}
		case equalFold(name, "transfer-encoding"):
			req.hasBody = true
		case equalFold(name, "accept-encoding"):
			req.gzip = req.gzip || acceptsGzip(value)
		case equalFold(name, "authorization"):
			if req.hasAuth {
				return 0, errDuplicate
			}
			req.auth, req.hasAuth = value, true
		case realIPHeader != "" && equalFold(name, realIPHeader):
			if req.nRealIP == maxRealIPLines {
				return 0, errTooManyRealIP
			}
			req.realIP[req.nRealIP] = value
			req.nRealIP++
		}
	}
	if req.minor == 1 && !host {
		return 0, errMissingHost
	}
	if req.minor == 1 {
		req.keepAlive = !connClose
	} else {
		req.keepAlive = connKeepAlive && !connClose
	}
	return pos, nil
}

// nextLine returns the line starting at pos without its CRLF, and the
// position after it.
func nextLine(b []byte, pos int) (line []byte, next int, err error) {
	i := bytes.IndexByte(b[pos:], '\n')
	if i < 0 {
		// A CR not followed by LF can be refused before the rest arrives.
		if cr := bytes.IndexByte(b[pos:], '\r'); cr >= 0 && pos+cr+1 < len(b) {
			return nil, 0, errBareLF
		}
		return nil, 0, errNeedMore
	}
	end := pos + i
	if i == 0 || b[end-1] != '\r' {
		return nil, 0, errBareLF
	}
	line = b[pos : end-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, 0, errBareLF
	}
	return line, end + 1, nil
}

// parseRequestLine reads "METHOD SP target SP HTTP/1.x".
func parseRequestLine(line []byte, req *request) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return errRequestLine
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return errRequestLine
	}
	sp2 += sp1 + 1
	method, target, version := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	if len(method) == 0 {
		return errMethod
	}
	for _, c := range method {
		if !tokenChar[c] {
			return errMethod
		}
	}
	req.method = method
	switch {
	case string(version) == "HTTP/1.1":
		req.minor = 1
	case string(version) == "HTTP/1.0":
		req.minor = 0
	case len(version) == 8 && string(version[:5]) == "HTTP/" && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]):
		return errHTTPVersion
	default:
		return errVersion
	}
	if len(target) == 0 {
		return errTarget
	}
	for _, c := range target {
		// Bytes above 0x7f are let through: some clients put raw bytes in
		// the query, and the query decoder copes with them.
		if c <= ' ' || c == 0x7f {
			return errTarget
		}
	}
	switch {
	case target[0] == '/':
	case target[0] == '*' && len(target) == 1:
		// Asterisk form (OPTIONS *): no path, answered 405 or 404.
	case hasPrefixFold(target, "http://") || hasPrefixFold(target, "https://"):
		// Absolute form, as sent to proxies; servers must accept it. The
		// authority is dropped: this server answers for any host.
		rest := target[bytes.Index(target, []byte("://"))+3:]
		slash := bytes.IndexAny(rest, "/?")
		if slash < 0 || rest[slash] != '/' {
			return errTarget
		}
		target = rest[slash:]
	default:
		return errTarget
	}
	req.pathQuery = target
	req.path = target
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		req.path, req.query = target[:q], target[q+1:]
	}
	return nil
}

// connectionTokens reports whether a Connection header value lists close
// and keep-alive.
func connectionTokens(v []byte) (hasClose, hasKeepAlive bool) {
	for len(v) > 0 {
		var tok []byte
		tok, v = nextListItem(v)
		tok = trimOWS(tok)
		hasClose = hasClose || equalFold(tok, "close")
		hasKeepAlive = hasKeepAlive || equalFold(tok, "keep-alive")
	}
	return hasClose, hasKeepAlive
}

// nextListItem splits the first item off a comma-separated header value.
func nextListItem(v []byte) (item, rest []byte) {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		return v[:i], v[i+1:]
	}
	return v, nil
}

// acceptsGzip reports whether an Accept-Encoding value lists gzip (or
// x-gzip) without q=0 (RFC 9110 section 12.5.3). A bare "*" is not taken
// as gzip: a client that wants it says so.
func acceptsGzip(v []byte) bool {
	for len(v) > 0 {
		var tok []byte
		tok, v = nextListItem(v)
		coding, params, _ := bytes.Cut(tok, []byte(";"))
		coding = trimOWS(coding)
		if !equalFold(coding, "gzip") && !equalFold(coding, "x-gzip") {
			continue
		}
		q := trimOWS(params)
		if hasPrefixFold(q, "q=") {
			w := bytes.TrimRight(q[2:], "0.")
			if len(w) == 0 { // q=0, q=0.0, q=0.000
				continue
			}
		}
		return true
	}
	return false
}

// equalFold reports whether b equals the lower-case ASCII string lower,
// ignoring ASCII case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func hasPrefixFold(b []byte, lower string) bool {
	return len(b) >= len(lower) && equalFold(b[:len(lower)], lower)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// tokenChar marks the characters allowed in an RFC 9110 token (methods and
// header names).
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// pathChar marks the characters allowed in a literal route segment: RFC 3986
// pchar without percent-escapes.
var pathChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~!$&'()*+,;=:@" {
		t[c] = true
	}
	return t
}()
