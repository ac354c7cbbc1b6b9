package http

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		method    string
		path      string
		query     string
		minor     int
		keepAlive bool
		auth      string
		realIP    []string
	}{
		{"simple", "GET /announce?a=b HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/announce", "a=b", 1, true, "", nil},
		{"no query", "GET /scrape HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/scrape", "", 1, true, "", nil},
		{"empty query", "GET /scrape? HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/scrape", "", 1, true, "", nil},
		{"head", "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", "HEAD", "/", "", 1, true, "", nil},
		{"http/1.1 close", "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", "GET", "/", "", 1, false, "", nil},
		{"close among tokens", "GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, CLOSE\r\n\r\n", "GET", "/", "", 1, false, "", nil},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n", "GET", "/", "", 0, false, "", nil},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "GET", "/", "", 0, true, "", nil},
		{"http/1.0 both", "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", "GET", "/", "", 0, false, "", nil},
		{"leading blank lines", "\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/", "", 1, true, "", nil},
		{"absolute form", "GET http://tracker.example:6969/announce?x=1 HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/announce", "x=1", 1, true, "", nil},
		{"raw high bytes in query", "GET /a?x=\xff\x80 HTTP/1.1\r\nHost: t\r\n\r\n", "GET", "/a", "x=\xff\x80", 1, true, "", nil},
		{"auth", "GET / HTTP/1.1\r\nHost: t\r\nAuthorization:  Bearer x y \t\r\n\r\n", "GET", "/", "", 1, true, "Bearer x y", nil},
		{"content-length zero", "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", "GET", "/", "", 1, true, "", nil},
		{"real ip lines", "GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for:2.2.2.2, 3.3.3.3\r\n\r\n", "GET", "/", "", 1, true, "", []string{"1.1.1.1", "2.2.2.2, 3.3.3.3"}},
		{"other method", "POST / HTTP/1.1\r\nHost: t\r\n\r\n", "POST", "/", "", 1, true, "", nil},
		{"asterisk", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", "OPTIONS", "*", "", 1, true, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in + "GET /next HTTP/1.1\r\n" // a pipelined request that must not be consumed
			var req request
			n, err := parseRequest([]byte(in), "x-forwarded-for", &req)
			if err != nil {
				t.Fatalf("parseRequest: %v", err)
			}
			if n != len(tt.in) {
				t.Errorf("consumed %d bytes, want %d", n, len(tt.in))
			}
			if string(req.method) != tt.method || string(req.path) != tt.path || string(req.query) != tt.query {
				t.Errorf("got %q %q ? %q, want %q %q ? %q", req.method, req.path, req.query, tt.method, tt.path, tt.query)
			}
			if req.minor != tt.minor || req.keepAlive != tt.keepAlive {
				t.Errorf("minor, keepAlive = %d, %v; want %d, %v", req.minor, req.keepAlive, tt.minor, tt.keepAlive)
			}
			if string(req.auth) != tt.auth || req.hasAuth != (tt.auth != "") {
				t.Errorf("auth = %q (%v), want %q", req.auth, req.hasAuth, tt.auth)
			}
			var realIP []string
			for _, v := range req.realIP[:req.nRealIP] {
				realIP = append(realIP, string(v))
			}
			if strings.Join(realIP, "|") != strings.Join(tt.realIP, "|") {
				t.Errorf("realIP = %q, want %q", realIP, tt.realIP)
			}
			if req.hasBody {
				t.Error("hasBody set for a request without body")
			}
		})
	}
}

func TestParseRequestBody(t *testing.T) {
	for _, in := range []string{
		"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 00001\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n",
	} {
		var req request
		if _, err := parseRequest([]byte(in), "", &req); err != nil || !req.hasBody {
			t.Errorf("parseRequest(%q) = %v, hasBody %v; want a body flagged", in, err, req.hasBody)
		}
	}
}

func TestParseRequestRejects(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		status int
	}{
		{"bare LF in request line", "GET / HTTP/1.1\nHost: t\r\n\r\n", 400},
		{"bare LF after header", "GET / HTTP/1.1\r\nHost: t\n\r\n", 400},
		{"bare LF at end", "GET / HTTP/1.1\r\nHost: t\r\n\n", 400},
		{"bare CR", "GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400},
		{"bare CR before more data", "GET / HTTP/1.1\r\nHost: t\rX", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\n: t\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: t\x00\r\n\r\n", 400},
		{"DEL in value", "GET / HTTP/1.1\r\nHost: t\x7f\r\n\r\n", 400},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"two content-lengths", "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400},
		{"bad content-length", "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400},
		{"empty content-length", "GET / HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n", 400},
		{"content-length list", "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 0\r\n\r\n", 400},
		{"two authorizations", "GET / HTTP/1.1\r\nHost: t\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", 400},
		{"too many real-ip lines", "GET / HTTP/1.1\r\nHost: t\r\n" + strings.Repeat("X-Forwarded-For: 1.1.1.1\r\n", maxRealIPLines+1) + "\r\n", 400},
		{"http/0.9", "GET /\r\n\r\n", 400},
		{"double space", "GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"trailing space", "GET / HTTP/1.1 \r\nHost: t\r\n\r\n", 400},
		{"tab separator", "GET\t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"lower-case version", "GET / http/1.1\r\nHost: t\r\n\r\n", 400},
		{"bad method", "G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"relative target", "GET announce HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"control in target", "GET /a\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"absolute without path", "GET http://host HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"absolute query only", "GET http://host?x HTTP/1.1\r\nHost: t\r\n\r\n", 400},
		{"http/2", "GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505},
		{"http/1.2", "GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req request
			_, err := parseRequest([]byte(tt.in), "x-forwarded-for", &req)
			var se *statusError
			if !errors.As(err, &se) {
				t.Fatalf("parseRequest(%q) = %v, want a status error", tt.in, err)
			}
			if se.status != tt.status {
				t.Errorf("status = %d, want %d (%v)", se.status, tt.status, err)
			}
		})
	}
}

// TestParseRequestIncomplete feeds every proper prefix of a valid request:
// each must ask for more input, never fail or succeed early.
func TestParseRequestIncomplete(t *testing.T) {
	in := "\r\nGET /announce?info_hash=x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"
	for i := range len(in) {
		var req request
		if _, err := parseRequest([]byte(in[:i]), "x-forwarded-for", &req); !errors.Is(err, errNeedMore) {
			t.Errorf("parseRequest(%q) = %v, want errNeedMore", in[:i], err)
		}
	}
}

func TestParseRequestDoesNotAllocate(t *testing.T) {
	in := []byte("GET /announce?info_hash=x HTTP/1.1\r\nHost: t\r\nUser-Agent: x\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n")
	var req request
	if n := testing.AllocsPerRun(100, func() { _, _ = parseRequest(in, "x-forwarded-for", &req) }); n != 0 {
		t.Errorf("parseRequest allocated %v times, want 0", n)
	}
}
