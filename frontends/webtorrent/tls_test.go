package webtorrent

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// wss:// with a certificate, such as the HTTP frontend's: the socket
// reads on a goroutine of its own (TLS buffers what it reads, so the
// poller cannot tell when a message waits) and speaks the same protocol.
func TestWSS(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	for f, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: pkcs8}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tt := newTestTracker(t, func(c *Config) { c.TLSCert, c.TLSKey = certFile, keyFile })
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	d := ws.Dialer{TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	nc, br, _, err := d.Dial(t.Context(), "wss://"+tt.s.Addr()+"/announce")
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	if br != nil {
		ws.PutReader(br)
	}
	t.Cleanup(func() { _ = nc.Close() })
	c := &client{t: t, nc: nc, rw: nc}
	c.send(announce(bin('1'), bin('a'), 0))
	if r := c.recv(); r["complete"] != 1.0 {
		t.Fatalf("announce over wss answered %v", r)
	}
	// Plain ws:// on the TLS port gets nothing.
	if _, _, _, err := ws.Dial(t.Context(), tt.url); err == nil {
		t.Error("a plain WebSocket upgrade succeeded on the wss:// port")
	}
}
