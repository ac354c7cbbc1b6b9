package http

import (
	"errors"
	"net/netip"
	"testing"
)

func TestRealIP(t *testing.T) {
	proxies := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
	}
	proxy := netip.MustParseAddr("10.0.0.1")
	client := netip.MustParseAddr("203.0.113.7")
	tests := []struct {
		name    string
		peer    netip.Addr
		values  []string
		want    string
		wantErr error
	}{
		{"untrusted peer ignores header", client, []string{"198.51.100.1"}, "203.0.113.7", nil},
		{"untrusted peer ignores garbage", client, []string{"garbage"}, "203.0.113.7", nil},
		{"trusted peer without header", proxy, nil, "10.0.0.1", nil},
		{"trusted peer single", proxy, []string{"198.51.100.1"}, "198.51.100.1", nil},
		{"rightmost untrusted wins", proxy, []string{"1.1.1.1, 198.51.100.1"}, "198.51.100.1", nil},
		{"trusted hops skipped", proxy, []string{"1.1.1.1, 198.51.100.1, 10.2.3.4,10.9.9.9"}, "198.51.100.1", nil},
		{"spoofed left part ignored", proxy, []string{"garbage, 198.51.100.1"}, "198.51.100.1", nil},
		{"lines joined in order", proxy, []string{"1.1.1.1", "198.51.100.1, 10.0.0.5"}, "198.51.100.1", nil},
		{"all trusted takes leftmost", proxy, []string{"10.0.0.9, 10.0.0.8"}, "10.0.0.9", nil},
		{"empty entries skipped", proxy, []string{"198.51.100.1, ,", ""}, "198.51.100.1", nil},
		{"ipv6", proxy, []string{"2001:db8::1"}, "2001:db8::1", nil},
		{"ipv6 brackets and port", proxy, []string{"[2001:db8::1]:4711"}, "2001:db8::1", nil},
		{"ipv4 with port", proxy, []string{"198.51.100.1:4711"}, "198.51.100.1", nil},
		{"mapped is unmapped", proxy, []string{"::ffff:198.51.100.1"}, "198.51.100.1", nil},
		{"ipv6 proxy trusted", netip.MustParseAddr("2001:db8:ffff::1"), []string{"198.51.100.1"}, "198.51.100.1", nil},
		{"garbage at client position", proxy, []string{"198.51.100.1, unknown"}, "", ErrUnknownClientIP},
		{"zone refused", proxy, []string{"fe80::1%eth0"}, "", ErrUnknownClientIP},
		{"bad brackets", proxy, []string{"[2001:db8::1"}, "", ErrUnknownClientIP},
		{"bracket junk", proxy, []string{"[2001:db8::1]x"}, "", ErrUnknownClientIP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var values [][]byte
			for _, v := range tt.values {
				values = append(values, []byte(v))
			}
			got, err := realIP(proxies, tt.peer, values)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("realIP error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && got.String() != tt.want {
				t.Errorf("realIP = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestRealIPNoProxies(t *testing.T) {
	peer := netip.MustParseAddr("192.0.2.1")
	got, err := realIP(nil, peer, [][]byte{[]byte("198.51.100.1")})
	if err != nil || got != peer {
		t.Errorf("realIP without proxies = %s, %v; want the peer %s", got, err, peer)
	}
}
