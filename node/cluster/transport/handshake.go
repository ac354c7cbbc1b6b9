package transport

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// The handshake: TLS 1.3, then one exchange inside it.
//
// Every connection is TLS 1.3 (ECDHE key exchange, so a recorded session
// cannot be decrypted later with any long-term secret). In certificate
// mode both sides present a certificate signed by a CA of the cluster's
// bundle that names the node (pki.go); the caller checks that the callee's
// names the member it meant to reach, the callee that the caller's names a
// current member, wherever it connects from. In shared-key mode each
// process presents a throwaway self-signed certificate that nobody checks,
// and the exchange below proves the shared key instead.
//
// Inside TLS, client first:
//
//	client hello  "KRTH" version:1 labellen:1 label n:1 keyid:8*n namelen:1 name
//	server hello  "KRTH" version:1 status:1 chosen:1 proof:32
//	client proof  proof:32                       (shared-key mode only)
//
// keyid = HKDF-SHA256(key, info "karuta data channel v2 key id")[:8] for
// each of the client's keys in its order; in certificate mode n is 0. The
// server picks the first offered id it holds (so the client's first key
// wins), or answers with a status saying why it cannot. name is the
// caller's node name: the callee counts the caller's sessions against it
// when it names a current member, so nodes sharing an address are told
// apart (in certificate mode the certificate's name counts instead). Each
// proof is
//
//	HMAC-SHA256(HKDF-SHA256(key, info "karuta data channel v2 proof"),
//	            TLS-Exporter("EXPORTER-karuta-data-channel-v2",
//	                         client hello | server hello[:7] | role, 32))
//
// with role "server" or "client". The exporter ties the proof to this TLS
// session, so a proof replayed on another connection or relayed through a
// man in the middle (who holds two different TLS sessions) fails; the
// context covers the label, the offered ids and the choice, so a relay
// that rewrites the offer to downgrade the key is caught; and the role
// keeps a server's proof from being reflected back as a client's. In
// certificate mode and insecure mode the proofs are all zero and ignored:
// the certificates (or nothing) authenticate.
const (
	helloMagic      = "KRTH"
	protocolVersion = 3
	keyIDSize       = 8
	proofSize       = sha256.Size
	maxKeys         = 16
	maxLabel        = 255
	maxName         = 255
	exporterLabel   = "EXPORTER-karuta-data-channel-v2"
	keyIDInfo       = "karuta data channel v2 key id"
	proofKeyInfo    = "karuta data channel v2 proof"

	serverHelloSize = len(helloMagic) + 3 + proofSize
)

// Server hello statuses.
const (
	statusOK            = 0
	statusLabelMismatch = 1
	statusNoSharedKey   = 2
	statusNeedKey       = 3 // the server proves keys; the client offered none
	noKeyChosen         = 0xff
)

var (
	errNoSharedKey   = errors.New("handshake: no key shared with the node; check secret_keys")
	errLabelMismatch = errors.New("handshake: cluster label mismatch")
	errBadProof      = errors.New("handshake: key proof does not verify")
	errNotMember     = errors.New("handshake: not a current member")
	// errSilent is a connection closed before it sent a byte of the
	// handshake: a port probe or a health check, not an attack to count.
	errSilent = errors.New("handshake: closed before saying anything")
)

// sharedKey is one secret key as the handshake uses it.
type sharedKey struct {
	id    [keyIDSize]byte
	proof []byte // the HMAC key of proofs
}

func newSharedKey(secret []byte) (sharedKey, error) {
	var k sharedKey
	id, err := hkdf.Key(sha256.New, secret, nil, keyIDInfo, keyIDSize)
	if err != nil {
		return k, err
	}
	copy(k.id[:], id)
	if k.proof, err = hkdf.Key(sha256.New, secret, nil, proofKeyInfo, sha256.Size); err != nil {
		return k, err
	}
	return k, nil
}

// clientHello is the parsed first message.
type clientHello struct {
	label string
	ids   [][keyIDSize]byte
	name  string
}

func appendClientHello(b []byte, label string, keys []sharedKey, name string) []byte {
	b = append(b, helloMagic...)
	b = append(b, protocolVersion, byte(len(label))) //nolint:gosec // G115: NewTCP caps the label at maxLabel (255)
	b = append(b, label...)
	b = append(b, byte(len(keys))) //nolint:gosec // G115: NewTCP caps the keys at maxKeys (16)
	for _, k := range keys {
		b = append(b, k.id[:]...)
	}
	b = append(b, byte(len(name))) //nolint:gosec // G115: NewTCP caps the name at maxName (255)
	return append(b, name...)
}

// readClientHello reads and parses a client hello, returning its raw
// bytes for the proof context. It reads at most what the header allows.
func readClientHello(r io.Reader) (clientHello, []byte, error) {
	var h clientHello
	raw := make([]byte, len(helloMagic)+2, len(helloMagic)+2+maxLabel+1+maxKeys*keyIDSize+1+maxName)
	if n, err := io.ReadFull(r, raw); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return h, nil, errSilent
		}
		return h, nil, fmt.Errorf("handshake: client hello: %w", err)
	}
	if string(raw[:4]) != helloMagic {
		return h, nil, errors.New("handshake: not a karuta data channel client")
	}
	if raw[4] != protocolVersion {
		return h, nil, fmt.Errorf("handshake: protocol version %d; want %d", raw[4], protocolVersion)
	}
	ll := int(raw[5])
	raw = raw[:len(raw)+ll+1]
	if _, err := io.ReadFull(r, raw[6:]); err != nil {
		return h, nil, fmt.Errorf("handshake: client hello: %w", err)
	}
	h.label = string(raw[6 : 6+ll])
	n := int(raw[len(raw)-1])
	if n > maxKeys {
		return h, nil, fmt.Errorf("handshake: client offers %d keys; at most %d allowed", n, maxKeys)
	}
	start := len(raw)
	raw = raw[:start+n*keyIDSize+1]
	if _, err := io.ReadFull(r, raw[start:]); err != nil {
		return h, nil, fmt.Errorf("handshake: client hello: %w", err)
	}
	for p := raw[start : len(raw)-1]; len(p) > 0; p = p[keyIDSize:] {
		h.ids = append(h.ids, [keyIDSize]byte(p[:keyIDSize]))
	}
	nl := int(raw[len(raw)-1])
	start = len(raw)
	raw = raw[:start+nl]
	if _, err := io.ReadFull(r, raw[start:]); err != nil {
		return h, nil, fmt.Errorf("handshake: client hello: %w", err)
	}
	h.name = string(raw[start:])
	return h, raw, nil
}

// serverHello is the parsed second message.
type serverHello struct {
	status, chosen byte
	proof          [proofSize]byte
}

func parseServerHello(b []byte) (serverHello, error) {
	var h serverHello
	if len(b) != serverHelloSize {
		return h, fmt.Errorf("handshake: server hello of %d bytes; want %d", len(b), serverHelloSize)
	}
	if string(b[:4]) != helloMagic || b[4] != protocolVersion {
		return h, errors.New("handshake: not a karuta data channel of this version")
	}
	h.status, h.chosen = b[5], b[6]
	copy(h.proof[:], b[7:])
	return h, nil
}

// proofContext is what a proof covers besides the TLS session.
func proofContext(clientHello, serverHelloHead []byte, role string) []byte {
	ctx := make([]byte, 0, len(clientHello)+len(serverHelloHead)+len(role))
	ctx = append(ctx, clientHello...)
	ctx = append(ctx, serverHelloHead...)
	return append(ctx, role...)
}

// prove computes the proof of k for role on the TLS session cs.
func prove(cs tls.ConnectionState, k sharedKey, ctx []byte) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, ctx, 32)
	if err != nil {
		return nil, fmt.Errorf("handshake: exporter: %w", err)
	}
	m := hmac.New(sha256.New, k.proof)
	m.Write(ekm)
	return m.Sum(nil), nil
}

// handshake runs TLS and the exchange on nc as the client (dialing the
// member name at addr; name is empty outside certificate mode) or the
// server, and returns the session and, on the server, whom its sessions
// are counted against: the node its certificate names, otherwise the node
// its hello names if that is a current member, otherwise the remote host.
// It gives up after the handshake timeout or at Close.
func (t *TCP) handshake(nc net.Conn, client bool, name string) (s *tcpSession, peer string, err error) {
	stop := context.AfterFunc(t.ctx, func() { nc.Close() })
	defer stop()
	deadline := time.Now().Add(t.opts.HandshakeTimeout)
	if sc, ok := nc.(*slotConn); ok {
		deadline = sc.deadline // counted from the accept
	}
	if err := nc.SetDeadline(deadline); err != nil {
		return nil, "", err
	}
	var tc *tls.Conn
	if client {
		tc = tls.Client(nc, t.clientConfig(name))
		err = t.clientExchange(tc)
	} else {
		tc = tls.Server(nc, t.serverConfig(&peer))
		var claimed string
		claimed, err = t.serverExchange(tc)
		switch {
		case peer != "": // named by its certificate
		case claimed != "" && t.opts.Members.IsMember(claimed):
			peer = "node " + claimed
		default:
			peer = remoteHost(nc).String()
		}
	}
	if err != nil {
		return nil, peer, err
	}
	if !stop() {
		return nil, peer, errTransportClosed
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, peer, err
	}
	s = &tcpSession{
		t:    t,
		nc:   tc,
		r:    bufio.NewReaderSize(tc, 32<<10),
		out:  make(chan *frameBuf, outQueue),
		done: make(chan struct{}),
	}
	s.touch()
	return s, peer, nil
}

func (t *TCP) clientExchange(tc *tls.Conn) error {
	if err := tc.Handshake(); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("handshake: the node closed the connection before TLS completed "+
				"(it had too many connections pending, or this one said nothing in time; "+
				"its log and karuta_cluster_data_rejected_total say which): %w", err)
		}
		return fmt.Errorf("handshake: tls: %w", err)
	}
	hello := appendClientHello(nil, t.opts.Label, t.keys, t.opts.Name)
	if _, err := tc.Write(hello); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	var sh [serverHelloSize]byte
	if _, err := io.ReadFull(tc, sh[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("handshake: the node closed the connection before answering; its log says why: %w", err)
		}
		return fmt.Errorf("handshake: %w", err)
	}
	h, err := parseServerHello(sh[:])
	if err != nil {
		return err
	}
	switch h.status {
	case statusOK:
	case statusLabelMismatch:
		return fmt.Errorf("%w: the node's label is not %q", errLabelMismatch, t.opts.Label)
	case statusNoSharedKey, statusNeedKey:
		return errNoSharedKey
	default:
		return fmt.Errorf("handshake: unknown status %d", h.status)
	}
	if len(t.keys) == 0 {
		return nil
	}
	if int(h.chosen) >= len(t.keys) {
		return fmt.Errorf("handshake: node chose key %d of %d offered", h.chosen, len(t.keys))
	}
	k := t.keys[h.chosen]
	cs := tc.ConnectionState()
	want, err := prove(cs, k, proofContext(hello, sh[:7], "server"))
	if err != nil {
		return err
	}
	if !hmac.Equal(want, h.proof[:]) {
		return errBadProof
	}
	mine, err := prove(cs, k, proofContext(hello, sh[:7], "client"))
	if err != nil {
		return err
	}
	if _, err := tc.Write(mine); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	return nil
}

// serverExchange runs the callee's side and returns the name the caller
// gave in its hello, which only the key proof (or certificate) vouches
// for.
func (t *TCP) serverExchange(tc *tls.Conn) (string, error) {
	if err := tc.Handshake(); err != nil {
		if errors.Is(err, io.EOF) {
			return "", errSilent
		}
		return "", fmt.Errorf("handshake: tls: %w", err)
	}
	h, hello, err := readClientHello(tc)
	if err != nil {
		return "", err
	}
	sh := make([]byte, 0, serverHelloSize)
	sh = append(sh, helloMagic...)
	sh = append(sh, protocolVersion, statusOK, noKeyChosen)
	var refuse error
	var key sharedKey
	switch {
	case h.label != t.opts.Label:
		sh[5] = statusLabelMismatch
		refuse = fmt.Errorf("%w: node has %q, this node %q", errLabelMismatch, h.label, t.opts.Label)
	case len(t.keys) == 0 && len(h.ids) > 0:
		sh[5] = statusNoSharedKey
		refuse = errors.New("handshake: client offered keys; this node has none")
	case len(t.keys) > 0 && len(h.ids) == 0:
		sh[5] = statusNeedKey
		refuse = errors.New("handshake: client offered no key; this node requires one")
	case len(t.keys) > 0:
		chosen := -1
		for i, id := range h.ids {
			for _, k := range t.keys {
				if k.id == id && chosen < 0 {
					chosen, key = i, k
				}
			}
		}
		if chosen < 0 {
			sh[5] = statusNoSharedKey
			refuse = errors.New("handshake: client offered no key this node has")
			break
		}
		sh[6] = byte(chosen)
	}
	cs := tc.ConnectionState()
	proof := make([]byte, proofSize)
	if refuse == nil && len(t.keys) > 0 {
		if proof, err = prove(cs, key, proofContext(hello, sh[:7], "server")); err != nil {
			return "", err
		}
	}
	sh = append(sh, proof...)
	if _, err := tc.Write(sh); err != nil {
		return "", fmt.Errorf("handshake: %w", err)
	}
	if refuse != nil || len(t.keys) == 0 {
		return h.name, refuse
	}
	want, err := prove(cs, key, proofContext(hello, sh[:7], "client"))
	if err != nil {
		return "", err
	}
	got := make([]byte, proofSize)
	if _, err := io.ReadFull(tc, got); err != nil {
		return "", fmt.Errorf("handshake: client proof: %w", err)
	}
	if !hmac.Equal(want, got) {
		return "", errBadProof
	}
	return h.name, nil
}

// baseTLS is what both sides' configs share: TLS 1.3 only and no
// resumption, so every session runs a fresh ECDHE exchange and every
// connection is checked against the current members and certificates.
func baseTLS() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
	}
}

func (t *TCP) clientConfig(name string) *tls.Config {
	c := baseTLS()
	// The certificate is checked in VerifyConnection, against the node
	// name rather than a host name; in shared-key mode the key proof
	// authenticates instead.
	c.InsecureSkipVerify = true
	if t.certs == nil {
		c.Certificates = []tls.Certificate{t.ephemeral}
		return c
	}
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		set, err := t.certs.latest(time.Now())
		t.noteReload(err)
		return set.cert, nil
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		set, _ := t.certs.latest(time.Now())
		got, err := verifyPeer(set, cs.PeerCertificates, x509.ExtKeyUsageServerAuth, time.Now())
		if err != nil {
			return err
		}
		if got != name {
			return fmt.Errorf("handshake: the node's certificate names %q; want %q", got, name)
		}
		return nil
	}
	return c
}

// serverConfig checks, in certificate mode, that the client's certificate
// names a current member, and stores that name in *name. Where the
// member connects from does not matter: its certificate is the proof.
func (t *TCP) serverConfig(name *string) *tls.Config {
	c := baseTLS()
	if t.certs == nil {
		c.Certificates = []tls.Certificate{t.ephemeral}
		return c
	}
	c.ClientAuth = tls.RequireAnyClientCert
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		set, err := t.certs.latest(time.Now())
		t.noteReload(err)
		return set.cert, nil
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		set, _ := t.certs.latest(time.Now())
		got, err := verifyPeer(set, cs.PeerCertificates, x509.ExtKeyUsageClientAuth, time.Now())
		if err != nil {
			return err
		}
		if !t.opts.Members.IsMember(got) {
			return fmt.Errorf("%w: the certificate names %q", errNotMember, got)
		}
		*name = got
		return nil
	}
	return c
}

// newEphemeral makes the throwaway certificate of shared-key mode: it
// carries the TLS handshake's signature and nothing else.
func newEphemeral() (tls.Certificate, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "karuta ephemeral"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// remoteHost is the IP address nc comes from, unmapped.
func remoteHost(nc net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
