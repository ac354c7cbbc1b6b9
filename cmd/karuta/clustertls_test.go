package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

func TestClusterTLS(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runCLI(t, "cluster", "tls", "ca", "--out", dir, "--days", "30"); code != exitOK {
		t.Fatalf("ca: exit %d: %s", code, stderr)
	}
	ca := filepath.Join(dir, "ca.pem")
	code, stdout, stderr := runCLI(t, "cluster", "tls", "cert", "n1", "--ca", ca, "--out", dir, "--ip", "127.0.0.1", "--dns", "n1.internal", "--key", "ed25519")
	if code != exitOK {
		t.Fatalf("cert: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "n1-key.pem") {
		t.Errorf("stdout %q does not name the key file", stdout)
	}
	for _, f := range []struct {
		name string
		perm os.FileMode
	}{{"ca.pem", 0o644}, {"ca-key.pem", 0o600}, {"n1.pem", 0o644}, {"n1-key.pem", 0o600}} {
		fi, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		// The umask may only take bits away.
		if fi.Mode().Perm()&^f.perm != 0 {
			t.Errorf("%s has mode %v; want at most %v", f.name, fi.Mode().Perm(), f.perm)
		}
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "n1.pem"), filepath.Join(dir, "n1-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := transport.CertPool(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("node certificate does not verify against the CA: %v", err)
	}
	if name, err := transport.CertNodeName(pair.Leaf); err != nil || name != "n1" {
		t.Errorf("certificate names %q (%v); want n1", name, err)
	}

	// Nothing is overwritten.
	before, _ := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if code, _, stderr := runCLI(t, "cluster", "tls", "ca", "--out", dir); code != exitFailure || !strings.Contains(stderr, "exists") {
		t.Errorf("second ca: exit %d, %q; want a refusal to overwrite", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca-key.pem")); !bytes.Equal(before, after) {
		t.Error("the CA key was replaced")
	}
	if code, _, _ := runCLI(t, "cluster", "tls", "cert", "n1", "--ca", ca, "--out", dir); code != exitFailure {
		t.Errorf("second cert: exit %d; want %d", code, exitFailure)
	}
}

func TestClusterTLSErrors(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runCLI(t, "cluster", "tls", "ca", "--out", dir); code != exitOK {
		t.Fatalf("ca: exit %d: %s", code, stderr)
	}
	ca := filepath.Join(dir, "ca.pem")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", []string{"cluster", "tls"}, exitUsage, "usage"},
		{"unknown command", []string{"cluster", "tls", "sign"}, exitUsage, `"sign"`},
		{"no node", []string{"cluster", "tls", "cert", "--ca", ca}, exitUsage, "missing NODE"},
		{"node with a slash", []string{"cluster", "tls", "cert", "../x", "--ca", ca}, exitUsage, "path separator"},
		{"bad ip", []string{"cluster", "tls", "cert", "n1", "--ca", ca, "--ip", "nope"}, exitUsage, `--ip: "nope"`},
		{"bad days", []string{"cluster", "tls", "ca", "--out", dir, "--days", "0"}, exitUsage, "--days: 0"},
		{"bad key", []string{"cluster", "tls", "ca", "--out", dir, "--key", "rsa"}, exitUsage, `--key: "rsa"`},
		{"missing ca", []string{"cluster", "tls", "cert", "n1", "--ca", filepath.Join(dir, "nope.pem")}, exitFailure, "--ca"},
		{"extra argument", []string{"cluster", "tls", "ca", "extra"}, exitUsage, `"extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}
