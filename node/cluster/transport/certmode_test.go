package transport

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// testPKI is a cluster CA with node certificates written to a directory,
// each node with its own copy of the CA bundle so tests can change one.
type testPKI struct {
	dir           string
	caCert, caKey []byte
}

func newTestPKI(t testing.TB) *testPKI {
	caCert, caKey := testCA(t, KeyECDSA)
	return &testPKI{dir: t.TempDir(), caCert: caCert, caKey: caKey}
}

// issue writes a certificate for name signed by this CA, and a bundle of
// this CA, under prefix; it returns the files.
func (p *testPKI) issue(t testing.TB, prefix, name string) CertFiles {
	t.Helper()
	certPEM, keyPEM, err := NewNodeCert(p.caCert, p.caKey, CertRequest{Name: name, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f := CertFiles{
		CA:   filepath.Join(p.dir, prefix+"-ca.pem"),
		Cert: filepath.Join(p.dir, prefix+".pem"),
		Key:  filepath.Join(p.dir, prefix+"-key.pem"),
	}
	writeFile(t, f.CA, p.caCert)
	writeFile(t, f.Cert, certPEM)
	writeFile(t, f.Key, keyPEM)
	return f
}

// reissue replaces the node certificate and key in f with ones for name
// from this CA.
func (p *testPKI) reissue(t testing.TB, f CertFiles, name string) {
	t.Helper()
	certPEM, keyPEM, err := NewNodeCert(p.caCert, p.caKey, CertRequest{Name: name, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, f.Key, keyPEM)
	writeFile(t, f.Cert, certPEM)
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	// Write and rename, as an operator's tooling should, so a reader
	// never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil { //nolint:gosec // G703: a path under the test's TempDir
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// certNode returns a certificate-mode transport using files.
func certNode(t *testing.T, files CertFiles, m *testMembers, mutate func(*TCPOptions)) *TCP {
	t.Helper()
	return newTestTCP(t, func(o *TCPOptions) {
		o.Keys, o.Certs, o.Members = nil, &files, m
		if mutate != nil {
			mutate(o)
		}
	})
}

// TestTCPCertIdentity checks that in certificate mode a node is who its
// certificate says, to both sides, and that only the cluster's CAs count.
func TestTCPCertIdentity(t *testing.T) {
	pki := newTestPKI(t)
	other := newTestPKI(t) // a CA this cluster does not trust
	for _, tc := range []struct {
		name string
		// server and client certificates, and what the client's members
		// call the server's address; the server knows the client's
		// certificate name as a member at 127.0.0.1 unless notMember.
		serverCert, clientCert func() CertFiles
		serverName             string
		notMember              bool
		want                   string // error substring; empty: the call succeeds
	}{
		{"both genuine", func() CertFiles { return pki.issue(t, "s", "n2") }, func() CertFiles { return pki.issue(t, "c", "n1") }, "n2", false, ""},
		{"server poses as another member", func() CertFiles { return pki.issue(t, "s", "n3") }, func() CertFiles { return pki.issue(t, "c", "n1") }, "n2", false, `names "n3"; want "n2"`},
		{"client is not a member", func() CertFiles { return pki.issue(t, "s", "n2") }, func() CertFiles { return pki.issue(t, "c", "n1") }, "n2", true, "handshake"},
		{"client certificate from another CA", func() CertFiles { return pki.issue(t, "s", "n2") }, func() CertFiles {
			f := other.issue(t, "c", "n1")
			writeFile(t, f.CA, append(bytes.Clone(pki.caCert), other.caCert...)) // it trusts the cluster CA, but its own certificate is foreign
			return f
		}, "n2", false, "handshake"},
		{"server certificate from another CA", func() CertFiles {
			f := other.issue(t, "s", "n2")
			writeFile(t, f.CA, append(bytes.Clone(pki.caCert), other.caCert...))
			return f
		}, func() CertFiles { return pki.issue(t, "c", "n1") }, "n2", false, "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trNoLeaks(t)
			h := &trHandler{}
			srvMembers, clMembers := loopbackMembers(), loopbackMembers()
			if !tc.notMember {
				srvMembers.add("n1", "unused:1")
			}
			srv := certNode(t, tc.serverCert(), srvMembers, nil)
			if err := srv.Serve(h); err != nil {
				t.Fatal(err)
			}
			clMembers.add(tc.serverName, srv.Addr())
			cl := certNode(t, tc.clientCert(), clMembers, nil)
			_, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(1)})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if h.calls.Load() != 1 {
					t.Fatalf("handler called %d times; want 1", h.calls.Load())
				}
				return
			}
			if err == nil || !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want ErrUnreachable mentioning %q", err, tc.want)
			}
			if n := h.calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			if n := tcpSessions(srv); n != 0 {
				t.Fatalf("server holds %d sessions", n)
			}
		})
	}

	t.Run("member at another address", func(t *testing.T) {
		// n1 gossips from elsewhere and its connection comes from
		// 127.0.0.1 (NAT, a second interface): its certificate is the
		// proof, so it is served.
		trNoLeaks(t)
		h := &trHandler{}
		srvMembers := loopbackMembers()
		srvMembers.hosts = map[netip.Addr]bool{netip.MustParseAddr("192.0.2.1"): true}
		srvMembers.add("n1", "192.0.2.1:7947")
		srv := certNode(t, pki.issue(t, "s", "n2"), srvMembers, nil)
		if err := srv.Serve(h); err != nil {
			t.Fatal(err)
		}
		clMembers := loopbackMembers()
		clMembers.add("n2", srv.Addr())
		cl := certNode(t, pki.issue(t, "c", "n1"), clMembers, nil)
		if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err != nil {
			t.Fatalf("a member with its certificate, from an address it does not advertise: %v", err)
		}
		if h.calls.Load() != 1 {
			t.Fatalf("handler called %d times; want 1", h.calls.Load())
		}
	})

	t.Run("no member known at the address", func(t *testing.T) {
		srv := certNode(t, pki.issue(t, "s", "n2"), loopbackMembers(), nil)
		if err := srv.Serve(&trHandler{}); err != nil {
			t.Fatal(err)
		}
		cl := certNode(t, pki.issue(t, "c", "n1"), loopbackMembers(), nil)
		if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); err == nil || !strings.Contains(err.Error(), "no member known") {
			t.Fatalf("got %v; want a refusal to dial an unknown address", err)
		}
	})
}

// TestTCPCertRotation rotates the CA and every node certificate while
// calls keep flowing: sessions established before keep working, new ones
// use the new files, and once the old CA is dropped from the bundle its
// certificates are refused.
func TestTCPCertRotation(t *testing.T) {
	trNoLeaks(t)
	oldCA, newCA := newTestPKI(t), newTestPKI(t)
	srvFiles, clFiles := oldCA.issue(t, "s", "n2"), oldCA.issue(t, "c", "n1")
	srvMembers, clMembers := loopbackMembers(), loopbackMembers()
	srvMembers.add("n1", "unused:1")
	h := &trHandler{}
	srv := certNode(t, srvFiles, srvMembers, nil)
	if err := srv.Serve(h); err != nil {
		t.Fatal(err)
	}
	clMembers.add("n2", srv.Addr())
	cl := certNode(t, clFiles, clMembers, func(o *TCPOptions) { o.ConnsPerPeer = 1 })

	// Calls run throughout the rotation; none may fail.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var failures []error
	var mu sync.Mutex
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := cl.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{Changes: manyChanges(1)}); err != nil {
				mu.Lock()
				failures = append(failures, err)
				mu.Unlock()
			}
		}
	})
	first := onlySession(t, srv)

	both := append(bytes.Clone(oldCA.caCert), newCA.caCert...)
	steps := []struct {
		name string
		do   func()
	}{
		{"trust old and new CA everywhere", func() {
			writeFile(t, srvFiles.CA, both)
			writeFile(t, clFiles.CA, both)
		}},
		{"server gets a certificate from the new CA", func() { newCA.reissue(t, srvFiles, "n2") }},
		{"client gets a certificate from the new CA", func() { newCA.reissue(t, clFiles, "n1") }},
		{"drop the old CA", func() {
			writeFile(t, srvFiles.CA, newCA.caCert)
			writeFile(t, clFiles.CA, newCA.caCert)
		}},
	}
	for _, st := range steps {
		st.do()
		// The server notices the change by itself; the client is told,
		// as SIGHUP does.
		if err := cl.Reload(); err != nil {
			t.Fatalf("%s: reload: %v", st.name, err)
		}
		// A fresh connection must pass with the files as they are now.
		fresh := certNode(t, clFiles, clMembers, nil)
		eventually.True(t, 5*time.Second, st.name+": a new connection succeeds", func() bool {
			_, err := fresh.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{})
			return err == nil
		})
	}
	if s := onlySessionOf(t, srv, first); s != first {
		t.Fatal("the session from before the rotation was replaced")
	}
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d calls failed during the rotation, first: %v", len(failures), failures[0])
	}

	// A node still on a certificate from the dropped CA is refused, even
	// though it trusts both.
	staleFiles := oldCA.issue(t, "stale", "n1")
	writeFile(t, staleFiles.CA, both)
	stale := certNode(t, staleFiles, clMembers, nil)
	if _, err := stale.Call(trCtx(t, 5*time.Second), srv.Addr(), &ApplyRequest{}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("certificate of the dropped CA: got %v; want ErrUnreachable", err)
	}
}

// onlySession waits for srv to hold exactly one session and returns it.
func onlySession(t *testing.T, srv *TCP) *tcpSession {
	t.Helper()
	eventually.True(t, 5*time.Second, "one session", func() bool { return tcpSessions(srv) == 1 })
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for s := range srv.sessions {
		return s
	}
	return nil
}

// onlySessionOf returns want if srv still holds it, else any session.
func onlySessionOf(t *testing.T, srv *TCP, want *tcpSession) *tcpSession {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if _, ok := srv.sessions[want]; ok {
		return want
	}
	for s := range srv.sessions {
		return s
	}
	return nil
}

func TestCertStoreReload(t *testing.T) {
	pki := newTestPKI(t)
	files := pki.issue(t, "n", "n1")
	cs, err := newCertStore(files)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	first, err := cs.latest(now)
	if err != nil || first.name != "n1" {
		t.Fatalf("latest: %v, %v", first, err)
	}
	// A changed file is picked up on the first look a second later, not
	// before.
	pki.reissue(t, files, "n1-renamed")
	if got, _ := cs.latest(now.Add(time.Millisecond)); got != first {
		t.Fatal("reloaded before checkEvery passed")
	}
	got, err := cs.latest(now.Add(checkEvery + time.Millisecond))
	if err != nil || got.name != "n1-renamed" {
		t.Fatalf("after the change: %v, %v; want the new certificate", got.name, err)
	}
	// A broken file keeps the last good set and says why.
	writeFile(t, files.Cert, []byte("not a certificate"))
	kept, err := cs.latest(now.Add(3 * checkEvery))
	if err == nil || kept != got {
		t.Fatalf("broken file: kept %v, err %v; want the previous set and an error", kept.name, err)
	}
	if err := cs.Reload(); err == nil {
		t.Fatal("Reload of a broken file succeeded")
	}
	// A key that does not match the certificate is refused.
	other := newTestPKI(t).issue(t, "o", "n1")
	key, _ := os.ReadFile(other.Key)
	pki.reissue(t, files, "n1")
	writeFile(t, files.Key, key)
	if err := cs.Reload(); err == nil {
		t.Fatal("a certificate with another key's private key loaded")
	}
}
