package transport

import (
	"context"
	"testing"
)

// BenchmarkChannel measures the data channel's cost per forwarded batch of
// 256 changes and per fetch round trip, one call at a time over loopback,
// in both modes. docs/performance.md compares it with the channel before
// TLS (same benchmark, same name).
func BenchmarkChannel(b *testing.B) {
	pki := &testPKI{dir: b.TempDir()}
	pki.caCert, pki.caKey = testCA(b, KeyECDSA)
	for _, mode := range []struct {
		name        string
		server, cli func(*TCPOptions)
	}{
		{"sharedkey", func(*TCPOptions) {}, func(*TCPOptions) {}},
		{"cert", func(o *TCPOptions) {
			f := pki.issue(b, "s", "n2")
			o.Keys, o.Certs = nil, &f
			o.Members.(*testMembers).add("n1", "unused:1")
		}, func(o *TCPOptions) {
			f := pki.issue(b, "c", "n1")
			o.Keys, o.Certs = nil, &f
		}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			srv := tcpServe(b, func(o *TCPOptions) { o.Log = nil; mode.server(o) }, &trHandler{})
			members := loopbackMembers()
			members.add("n2", srv.Addr())
			cl := newTestTCP(b, func(o *TCPOptions) { o.Log = nil; o.Members = members; mode.cli(o) })
			ctx := context.Background()
			for _, bc := range []struct {
				name string
				req  Request
			}{
				{"apply256", &ApplyRequest{Changes: manyChanges(256)}},
				{"fetch200", &FetchRequest{InfoHash: testInfoHash(1), MaxPeers: 200}},
			} {
				if _, err := cl.Call(ctx, srv.Addr(), bc.req); err != nil {
					b.Fatal(err)
				}
				b.Run(bc.name, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						if _, err := cl.Call(ctx, srv.Addr(), bc.req); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}
