package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

const clusterTLSUsage = `usage:
  karuta cluster tls ca [--out DIR] [--days N] [--key ecdsa|ed25519]
      writes DIR/ca.pem and DIR/ca-key.pem: a new cluster CA
  karuta cluster tls cert NODE [--ca DIR/ca.pem] [--ca-key DIR/ca-key.pem]
                              [--ip IP]... [--dns NAME]... [--out DIR] [--days N] [--key ecdsa|ed25519]
      writes DIR/NODE.pem and DIR/NODE-key.pem: a certificate for the node
      named NODE (node.name), signed by the CA
`

// clusterTLSCmd runs `karuta cluster tls ca|cert`: it creates the cluster
// CA and node certificates of the data channel's certificate mode. Keys are
// written 0600 and existing files are never overwritten.
func clusterTLSCmd(args []string, stdout, stderr io.Writer) int {
	if isHelp(args) {
		fmt.Fprint(stdout, clusterTLSUsage)
		return exitOK
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, clusterTLSUsage)
		return exitUsage
	}
	switch args[0] {
	case "ca":
		return tlsCA(args[1:], stdout, stderr)
	case "cert":
		return tlsCert(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "karuta: cluster tls: unknown command %q\n%s", args[0], clusterTLSUsage)
	return exitUsage
}

// tlsFlags are the flags both commands share.
type tlsFlags struct {
	out  *string
	days *int
	key  *string
}

func newTLSFlags(fs *flag.FlagSet, days int) tlsFlags {
	return tlsFlags{
		out:  fs.String("out", ".", "`directory` to write the files to"),
		days: fs.Int("days", days, "validity in `days`"),
		key:  fs.String("key", string(transport.KeyECDSA), "key `type`: ecdsa (P-256) or ed25519"),
	}
}

func (f tlsFlags) request(name string) (transport.CertRequest, error) {
	if *f.days < 1 || *f.days > 36500 {
		return transport.CertRequest{}, fmt.Errorf("--days: %d is out of range; want 1 to 36500", *f.days)
	}
	kt := transport.KeyType(*f.key)
	if kt != transport.KeyECDSA && kt != transport.KeyEd25519 {
		return transport.CertRequest{}, fmt.Errorf("--key: %q is not allowed; want ecdsa or ed25519", *f.key)
	}
	return transport.CertRequest{Name: name, Key: kt, NotBefore: time.Now(), Validity: time.Duration(*f.days) * 24 * time.Hour}, nil
}

func tlsCA(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cluster tls ca", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := newTLSFlags(fs, 3650)
	name := fs.String("name", "Karuta cluster CA", "the CA's common `name`")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "karuta: cluster tls ca: unexpected argument %q\n%s", fs.Arg(0), clusterTLSUsage)
		return exitUsage
	}
	req, err := f.request(*name)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls ca: %v\n", err)
		return exitUsage
	}
	certPEM, keyPEM, err := transport.NewCA(req)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls ca: %v\n", err)
		return exitFailure
	}
	certPath, keyPath := filepath.Join(*f.out, "ca.pem"), filepath.Join(*f.out, "ca-key.pem")
	if err := writePair(certPath, certPEM, keyPath, keyPEM); err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls ca: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "wrote %s and %s (keep the key offline; nodes need only %s)\n", certPath, keyPath, certPath)
	return exitOK
}

// multiFlag collects a flag given several times.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func tlsCert(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cluster tls cert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := newTLSFlags(fs, 365)
	caPath := fs.String("ca", "ca.pem", "the CA certificate `file`")
	caKeyPath := fs.String("ca-key", "", "the CA key `file` (default: ca-key.pem beside --ca)")
	var ips, dns multiFlag
	fs.Var(&ips, "ip", "an IP `address` to add to the certificate (repeatable)")
	fs.Var(&dns, "dns", "a DNS `name` to add to the certificate (repeatable)")
	// Flags may follow the node name: parse around it.
	var node string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		node, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if node == "" && fs.NArg() > 0 {
		node = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: unexpected argument %q\n%s", fs.Arg(0), clusterTLSUsage)
		return exitUsage
	}
	if node == "" {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: missing NODE (the node's node.name)\n%s", clusterTLSUsage)
		return exitUsage
	}
	if strings.ContainsAny(node, `/\`) || node == "." || node == ".." {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: NODE %q must not contain a path separator (it names the files)\n", node)
		return exitUsage
	}
	req, err := f.request(node)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: %v\n", err)
		return exitUsage
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			fmt.Fprintf(stderr, "karuta: cluster tls cert: --ip: %q is not an IP address\n", s)
			return exitUsage
		}
		req.IPs = append(req.IPs, ip)
	}
	req.DNS = dns
	if *caKeyPath == "" {
		*caKeyPath = filepath.Join(filepath.Dir(*caPath), "ca-key.pem")
	}
	caCert, err := os.ReadFile(*caPath)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: --ca: %v\n", err)
		return exitFailure
	}
	caKey, err := os.ReadFile(*caKeyPath)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: --ca-key: %v\n", err)
		return exitFailure
	}
	certPEM, keyPEM, err := transport.NewNodeCert(caCert, caKey, req)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: %v\n", err)
		return exitFailure
	}
	certPath, keyPath := filepath.Join(*f.out, node+".pem"), filepath.Join(*f.out, node+"-key.pem")
	if err := writePair(certPath, certPEM, keyPath, keyPEM); err != nil {
		fmt.Fprintf(stderr, "karuta: cluster tls cert: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "wrote %s and %s for node %q\n", certPath, keyPath, node)
	return exitOK
}

// writePair writes a certificate (0644) and its key (0600), refusing to
// replace either: overwriting a CA key by accident would orphan every node
// certificate it signed.
func writePair(certPath string, certPEM []byte, keyPath string, keyPEM []byte) error {
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil { //nolint:gosec // G703: the operator names the directory; that is the point
			return fmt.Errorf("%s exists; remove it or choose another --out", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath) //nolint:gosec // G703: the file this command just created
		return err
	}
	return nil
}

func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm) //nolint:gosec // G304: the operator names the directory; O_EXCL never replaces a file
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close() // the write error is the one to report
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
