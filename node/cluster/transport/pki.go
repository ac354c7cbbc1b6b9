package transport

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// The cluster's certificates. A node's certificate names the node with a
// URI SAN karuta://node/NAME (NAME path-escaped), so any node name works,
// not only those that are valid DNS names; it is valid for both TLS client
// and server authentication, because every node both calls and answers.

// nodeURIScheme and nodeURIHost form the URI SAN naming a node.
const (
	nodeURIScheme = "karuta"
	nodeURIHost   = "node"
)

// KeyType selects the algorithm of a generated key.
type KeyType string

// The key types NewCA and NewNodeCert can generate.
const (
	KeyECDSA   KeyType = "ecdsa"   // ECDSA on P-256
	KeyEd25519 KeyType = "ed25519" // Ed25519
)

// CertRequest describes a certificate to create.
type CertRequest struct {
	// Name is the node's name (node.name) for a node certificate, or the
	// CA's common name.
	Name string
	// IPs and DNS are extra subject alternative names, informational for
	// operators: peers check the node name, not the address.
	IPs []net.IP
	DNS []string
	// Key is the key type; empty means KeyECDSA.
	Key KeyType
	// NotBefore is when the certificate becomes valid; a minute before it
	// is accepted too, for clocks slightly behind.
	NotBefore time.Time
	// Validity is how long it stays valid.
	Validity time.Duration
}

// NewCA creates a self-signed cluster CA and returns its certificate and
// private key, PEM-encoded.
func NewCA(req CertRequest) (certPEM, keyPEM []byte, err error) {
	if req.Name == "" {
		req.Name = "Karuta cluster CA"
	}
	key, tmpl, err := newTemplate(req)
	if err != nil {
		return nil, nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: create CA: %w", err)
	}
	return encode(der, key)
}

// NewNodeCert creates a certificate for node req.Name signed by the CA
// whose PEM certificate and key are given, and returns the certificate and
// its private key, PEM-encoded.
func NewNodeCert(caCertPEM, caKeyPEM []byte, req CertRequest) (certPEM, keyPEM []byte, err error) {
	if req.Name == "" {
		return nil, nil, errors.New("transport: node certificate: empty node name")
	}
	ca, err := tlsKeyPair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: CA: %w", err)
	}
	if !ca.Leaf.IsCA {
		return nil, nil, errors.New("transport: CA: the certificate is not a CA")
	}
	key, tmpl, err := newTemplate(req)
	if err != nil {
		return nil, nil, err
	}
	tmpl.URIs = []*url.URL{NodeURI(req.Name)}
	tmpl.IPAddresses = req.IPs
	tmpl.DNSNames = req.DNS
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if tmpl.NotAfter.After(ca.Leaf.NotAfter) {
		tmpl.NotAfter = ca.Leaf.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Leaf, key.Public(), ca.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: create certificate for %s: %w", req.Name, err)
	}
	return encode(der, key)
}

// NodeURI is the URI SAN that names node name in its certificate.
func NodeURI(name string) *url.URL {
	return &url.URL{Scheme: nodeURIScheme, Host: nodeURIHost, Path: "/" + name, RawPath: "/" + url.PathEscape(name)}
}

// CertNodeName returns the node a certificate names, from its URI SAN.
func CertNodeName(c *x509.Certificate) (string, error) {
	var names []string
	for _, u := range c.URIs {
		if u.Scheme != nodeURIScheme || u.Host != nodeURIHost {
			continue
		}
		name, err := url.PathUnescape(strings.TrimPrefix(u.EscapedPath(), "/"))
		if err != nil || name == "" {
			return "", fmt.Errorf("certificate has a malformed node URI %q", u.String())
		}
		names = append(names, name)
	}
	if len(names) != 1 {
		return "", fmt.Errorf("certificate names %d nodes; want exactly one %s://%s/NAME URI", len(names), nodeURIScheme, nodeURIHost)
	}
	return names[0], nil
}

func newKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", KeyECDSA:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("transport: key type %q; want %s or %s", kt, KeyECDSA, KeyEd25519)
}

// newTemplate generates the key and the fields every certificate shares.
func newTemplate(req CertRequest) (crypto.Signer, *x509.Certificate, error) {
	if req.Validity <= 0 {
		return nil, nil, fmt.Errorf("transport: validity %s; want more than zero", req.Validity)
	}
	key, err := newKey(req.Key)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, nil, err
	}
	skid := sha256.Sum256(spki)
	nb := req.NotBefore
	if nb.IsZero() {
		nb = time.Now()
	}
	return key, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"Karuta cluster"}},
		NotBefore:    nb.Add(-time.Minute),
		NotAfter:     nb.Add(req.Validity),
		SubjectKeyId: skid[:20],
	}, nil
}

func encode(der []byte, key crypto.Signer) (certPEM, keyPEM []byte, err error) {
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
	return certPEM, keyPEM, nil
}

// CertPool parses a PEM bundle of one or more CA certificates; trusting
// several at once is how a CA is rotated.
func CertPool(bundle []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("certificate %d (%s) is not a CA", n+1, c.Subject.CommonName)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return pool, nil
}
