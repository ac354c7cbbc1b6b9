package transport

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// testCA returns a fresh CA valid for a day.
func testCA(t testing.TB, kt KeyType) (certPEM, keyPEM []byte) {
	t.Helper()
	c, k, err := NewCA(CertRequest{Name: "test CA", Key: kt, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func parseCert(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNodeCert(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  KeyType
		node string
	}{
		{"ecdsa", KeyECDSA, "n1"},
		{"ed25519", KeyEd25519, "n1"},
		{"default key", "", "fra1-a.example"},
		{"name with separators", KeyECDSA, "node 7/rack:3@dc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caCert, caKey := testCA(t, tc.key)
			certPEM, keyPEM, err := NewNodeCert(caCert, caKey, CertRequest{
				Name: tc.node, Key: tc.key, Validity: time.Hour,
				IPs: []net.IP{net.ParseIP("192.0.2.7")}, DNS: []string{"n1.internal"},
			})
			if err != nil {
				t.Fatal(err)
			}
			pool, err := CertPool(caCert)
			if err != nil {
				t.Fatal(err)
			}
			c, err := tlsKeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			set := &certSet{pool: pool}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				got, err := verifyPeer(set, []*x509.Certificate{c.Leaf}, usage, time.Now())
				if err != nil {
					t.Fatalf("usage %v: %v", usage, err)
				}
				if got != tc.node {
					t.Errorf("certificate names %q; want %q", got, tc.node)
				}
			}
			if len(c.Leaf.IPAddresses) != 1 || !c.Leaf.IPAddresses[0].Equal(net.ParseIP("192.0.2.7")) || len(c.Leaf.DNSNames) != 1 {
				t.Errorf("SANs %v %v; want the IP and DNS name asked for", c.Leaf.IPAddresses, c.Leaf.DNSNames)
			}
			if c.Leaf.IsCA {
				t.Error("node certificate is a CA")
			}
			// Another CA does not vouch for it.
			other, _ := testCA(t, tc.key)
			otherPool, err := CertPool(other)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := verifyPeer(&certSet{pool: otherPool}, []*x509.Certificate{c.Leaf}, x509.ExtKeyUsageServerAuth, time.Now()); err == nil {
				t.Error("a certificate from another CA verified")
			}
			// Expired is refused.
			if _, err := verifyPeer(set, []*x509.Certificate{c.Leaf}, x509.ExtKeyUsageServerAuth, time.Now().Add(2*time.Hour)); err == nil {
				t.Error("an expired certificate verified")
			}
		})
	}
}

func TestNodeCertNotAfterCA(t *testing.T) {
	caCert, caKey := testCA(t, KeyECDSA)
	certPEM, _, err := NewNodeCert(caCert, caKey, CertRequest{Name: "n1", Validity: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if ca, c := parseCert(t, caCert), parseCert(t, certPEM); c.NotAfter.After(ca.NotAfter) {
		t.Errorf("node certificate outlives its CA: %s > %s", c.NotAfter, ca.NotAfter)
	}
}

func TestNewNodeCertErrors(t *testing.T) {
	caCert, caKey := testCA(t, KeyECDSA)
	nodeCert, nodeKey, err := NewNodeCert(caCert, caKey, CertRequest{Name: "n1", Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey := testCA(t, KeyECDSA)
	for _, tc := range []struct {
		name          string
		caCert, caKey []byte
		req           CertRequest
		want          string
	}{
		{"no name", caCert, caKey, CertRequest{Validity: time.Hour}, "empty node name"},
		{"no validity", caCert, caKey, CertRequest{Name: "n1"}, "validity"},
		{"bad key type", caCert, caKey, CertRequest{Name: "n1", Key: "rsa", Validity: time.Hour}, "key type"},
		{"not a CA", nodeCert, nodeKey, CertRequest{Name: "n2", Validity: time.Hour}, "not a CA"},
		{"key of another CA", caCert, otherKey, CertRequest{Name: "n2", Validity: time.Hour}, "CA"},
		{"garbage", []byte("x"), []byte("y"), CertRequest{Name: "n2", Validity: time.Hour}, "CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := NewNodeCert(tc.caCert, tc.caKey, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestCertPool(t *testing.T) {
	a, _ := testCA(t, KeyECDSA)
	b, bKey := testCA(t, KeyEd25519)
	nodeCert, _, err := NewNodeCert(b, bKey, CertRequest{Name: "n1", Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		bundle []byte
		want   string // error substring; empty: valid
	}{
		{"one", a, ""},
		{"old and new", append(bytes.Clone(a), b...), ""},
		{"with a key block between", append(append(bytes.Clone(a), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")...), b...), ""},
		{"empty", nil, "no PEM"},
		{"not a CA", nodeCert, "not a CA"},
		{"corrupt", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "certificate 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CertPool(tc.bundle)
			if tc.want == "" && err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err = %v; want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestCertNodeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		uris []string
		want string // empty: an error
	}{
		{"one", []string{"karuta://node/n1"}, "n1"},
		{"escaped", []string{"karuta://node/a%2Fb"}, "a/b"},
		{"other URIs ignored", []string{"spiffe://x/y", "karuta://node/n2"}, "n2"},
		{"none", nil, ""},
		{"two", []string{"karuta://node/n1", "karuta://node/n2"}, ""},
		{"empty name", []string{"karuta://node/"}, ""},
		{"other host", []string{"karuta://ca/n1"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &x509.Certificate{}
			for _, s := range tc.uris {
				u, err := parseURL(s)
				if err != nil {
					t.Fatal(err)
				}
				c.URIs = append(c.URIs, u)
			}
			got, err := CertNodeName(c)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("got %q; want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func parseURL(s string) (*url.URL, error) { return url.Parse(s) }
