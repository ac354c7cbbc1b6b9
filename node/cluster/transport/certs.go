package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// CertFiles name the PEM files of certificate mode.
type CertFiles struct {
	// CA is the bundle of CA certificates trusted for peers; several at
	// once (old and new) while a CA is rotated.
	CA string
	// Cert and Key are this node's certificate and private key.
	Cert, Key string
}

// certSet is one loaded generation of the files.
type certSet struct {
	cert *tls.Certificate
	name string // the node the certificate names
	pool *x509.CertPool
}

// certStore holds the latest certSet and reloads it when the files change,
// so handshakes always use the newest certificate and trust bundle while
// sessions already established carry on. It is safe for concurrent use.
type certStore struct {
	files CertFiles
	cur   atomic.Pointer[certSet]

	mu        sync.Mutex // serialises reloads
	stamp     fileStamp
	lastCheck time.Time
}

// fileStamp is what tells a changed file: size and modification time of
// each of the three.
type fileStamp [3]struct {
	size int64
	mod  time.Time
}

// checkEvery bounds how often a handshake looks at the files.
const checkEvery = time.Second

func newCertStore(files CertFiles) (*certStore, error) {
	cs := &certStore{files: files}
	if err := cs.Reload(); err != nil {
		return nil, err
	}
	return cs, nil
}

// Reload reads the files again and switches to them if they are valid;
// on error the previous generation stays in use.
func (cs *certStore) Reload() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.reloadLocked()
}

func (cs *certStore) reloadLocked() error {
	st, err := cs.files.stamp()
	if err != nil {
		return err
	}
	set, err := loadCertSet(cs.files)
	if err != nil {
		return err
	}
	cs.cur.Store(set)
	cs.stamp = st
	return nil
}

// latest returns the current set, first reloading it if the files changed
// since the last look (at most once per checkEvery). A failed reload keeps
// the previous set, with the error: a half-written file must not stop the
// node.
func (cs *certStore) latest(now time.Time) (*certSet, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var err error
	if now.Sub(cs.lastCheck) >= checkEvery {
		cs.lastCheck = now
		if st, serr := cs.files.stamp(); serr != nil {
			err = serr
		} else if st != cs.stamp {
			err = cs.reloadLocked()
		}
	}
	return cs.cur.Load(), err
}

func (f CertFiles) stamp() (fileStamp, error) {
	var st fileStamp
	for i, p := range []string{f.CA, f.Cert, f.Key} {
		fi, err := os.Stat(p)
		if err != nil {
			return st, fmt.Errorf("transport: %w", err)
		}
		st[i].size, st[i].mod = fi.Size(), fi.ModTime()
	}
	return st, nil
}

func loadCertSet(f CertFiles) (*certSet, error) {
	bundle, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("transport: CA bundle: %w", err)
	}
	pool, err := CertPool(bundle)
	if err != nil {
		return nil, fmt.Errorf("transport: CA bundle %s: %w", f.CA, err)
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("transport: node certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("transport: node key: %w", err)
	}
	cert, err := tlsKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("transport: node certificate %s: %w", f.Cert, err)
	}
	name, err := CertNodeName(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("transport: node certificate %s: %w", f.Cert, err)
	}
	if _, err := cert.Leaf.Verify(nodeVerifyOptions(pool, x509.ExtKeyUsageServerAuth, time.Now())); err != nil {
		return nil, fmt.Errorf("transport: node certificate %s is not signed by a CA in %s: %w", f.Cert, f.CA, err)
	}
	return &certSet{cert: cert, name: name, pool: pool}, nil
}

// tlsKeyPair parses a PEM certificate chain and its key.
func tlsKeyPair(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

func nodeVerifyOptions(pool *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}
}

// verifyPeer checks a peer's certificate chain against the trusted CAs
// and returns the node it names.
func verifyPeer(set *certSet, chain []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("peer sent no certificate")
	}
	opts := nodeVerifyOptions(set.pool, usage, now)
	opts.Intermediates = x509.NewCertPool()
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return "", fmt.Errorf("peer certificate: %w", err)
	}
	return CertNodeName(chain[0])
}
