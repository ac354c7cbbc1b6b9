package http

import (
	"reflect"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

func TestRouterMatch(t *testing.T) {
	r, err := newRouter(
		[]string{"/announce", "/{passkey}/announce", "/a/{user}/{key}", "/a/static/x"},
		[]string{"/scrape", "/{passkey}/scrape"},
	)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		want    string // matched pattern, "" for none
		kind    routeKind
		wantRte []bittorrent.Param
	}{
		{"/announce", "/announce", routeAnnounce, nil},
		{"/scrape", "/scrape", routeScrape, nil},
		{"/abc123/announce", "/{passkey}/announce", routeAnnounce, []bittorrent.Param{{Key: "passkey", Value: "abc123"}}},
		{"/abc123/scrape", "/{passkey}/scrape", routeScrape, []bittorrent.Param{{Key: "passkey", Value: "abc123"}}},
		{"/a%2Fb%20c/announce", "/{passkey}/announce", routeAnnounce, []bittorrent.Param{{Key: "passkey", Value: "a/b c"}}},
		{"/a+b/announce", "/{passkey}/announce", routeAnnounce, []bittorrent.Param{{Key: "passkey", Value: "a+b"}}},
		{"/a/u/k", "/a/{user}/{key}", routeAnnounce, []bittorrent.Param{{Key: "user", Value: "u"}, {Key: "key", Value: "k"}}},
		{"/a/static/x", "/a/static/x", routeAnnounce, nil}, // a literal route wins over a pattern
		{"/", "", 0, nil},
		{"", "", 0, nil},
		{"/announce/", "", 0, nil},
		{"/Announce", "", 0, nil},
		{"/%61nnounce", "", 0, nil},
		{"//announce", "", 0, nil}, // empty segments never match a parameter
		{"/x/y/announce", "", 0, nil},
		{"/a/u", "", 0, nil},
		{"/a/u/k/", "", 0, nil},
		{"/a/u/k/z", "", 0, nil},
		{"/%zz/announce", "", 0, nil}, // a malformed escape is no match
		{"/%4/announce", "", 0, nil},
		{"*", "", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			var caps [maxRouteParams]span
			rt, ok := r.match([]byte(tt.path), &caps)
			if tt.want == "" {
				if ok {
					t.Fatalf("match(%q) = %q, want no match", tt.path, rt.pattern)
				}
				return
			}
			if !ok || rt.pattern != tt.want || rt.kind != tt.kind {
				t.Fatalf("match(%q) = %v, %v; want %q", tt.path, rt, ok, tt.want)
			}
			if got := routeParams(rt, tt.path, &caps); !reflect.DeepEqual(got, tt.wantRte) {
				t.Errorf("routeParams = %v, want %v", got, tt.wantRte)
			}
		})
	}
}

func TestRouterMatchDoesNotAllocate(t *testing.T) {
	r, err := newRouter([]string{"/announce", "/{passkey}/announce"}, []string{"/scrape"})
	if err != nil {
		t.Fatal(err)
	}
	var caps [maxRouteParams]span
	for _, p := range []string{"/announce", "/abc/announce", "/nothing/here"} {
		path := []byte(p)
		if n := testing.AllocsPerRun(100, func() { r.match(path, &caps) }); n != 0 {
			t.Errorf("match(%q) allocated %v times, want 0", p, n)
		}
	}
}
