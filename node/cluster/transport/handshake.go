package transport

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// handshake authenticates nc as the client or the server side and returns
// the session. It gives up after handshakeTimeout or at Close.
func (t *TCP) handshake(nc net.Conn, client bool) (*tcpSession, error) {
	stop := context.AfterFunc(t.ctx, func() { nc.Close() })
	defer stop()
	if err := nc.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return nil, err
	}
	var sendKey, recvKey []byte
	var err error
	if client {
		sendKey, recvKey, err = t.clientHandshake(nc)
	} else {
		sendKey, recvKey, err = t.serverHandshake(nc)
	}
	if err != nil {
		return nil, err
	}
	if !stop() {
		return nil, errTransportClosed
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	s := &tcpSession{
		t:    t,
		nc:   nc,
		r:    bufio.NewReaderSize(nc, 32<<10),
		out:  make(chan *frameBuf, outQueue),
		done: make(chan struct{}),
	}
	if s.seal, err = newGCM(sendKey); err != nil {
		return nil, err
	}
	if s.open, err = newGCM(recvKey); err != nil {
		return nil, err
	}
	s.touch()
	return s, nil
}

func (t *TCP) clientHandshake(nc net.Conn) (sendKey, recvKey []byte, err error) {
	nc0 := make([]byte, nonceSize)
	if _, err := rand.Read(nc0); err != nil {
		return nil, nil, err
	}
	hello := make([]byte, 0, 6+len(t.opts.Label)+nonceSize)
	hello = append(hello, clientMagic...)
	hello = append(hello, protocolVersion, byte(len(t.opts.Label)))
	hello = append(hello, t.opts.Label...)
	hello = append(hello, nc0...)
	if _, err := nc.Write(hello); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	var sh [len(serverMagic) + 1 + nonceSize + 1]byte
	if _, err := io.ReadFull(nc, sh[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("handshake: closed by the node (different label or version?): %w", err)
		}
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if string(sh[:4]) != serverMagic || sh[4] != protocolVersion {
		return nil, nil, errors.New("handshake: not a karuta data channel of this version")
	}
	ns := sh[5 : 5+nonceSize]
	n := int(sh[len(sh)-1])
	if n == 0 || n > maxKeys {
		return nil, nil, fmt.Errorf("handshake: node offers %d keys", n)
	}
	proofs := make([]byte, n*proofSize)
	if _, err := io.ReadFull(nc, proofs); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	key := t.matchKey(nc0, ns, "server proof", proofs)
	if key == nil {
		return nil, nil, errNoSharedKey
	}
	if _, err := nc.Write(t.mac(key, nc0, ns, "client proof")); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	return t.mac(key, nc0, ns, "client to server"), t.mac(key, nc0, ns, "server to client"), nil
}

func (t *TCP) serverHandshake(nc net.Conn) (sendKey, recvKey []byte, err error) {
	var hdr [len(clientMagic) + 2]byte
	if n, err := io.ReadFull(nc, hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, nil, io.EOF
		}
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if string(hdr[:4]) != clientMagic {
		return nil, nil, errors.New("handshake: not a karuta data channel client")
	}
	if hdr[4] != protocolVersion {
		return nil, nil, fmt.Errorf("handshake: protocol version %d; want %d", hdr[4], protocolVersion)
	}
	rest := make([]byte, int(hdr[5])+nonceSize)
	if _, err := io.ReadFull(nc, rest); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if label := rest[:hdr[5]]; string(label) != t.opts.Label {
		return nil, nil, fmt.Errorf("%w: node has %q, this node %q", errLabelMismatch, label, t.opts.Label)
	}
	nc0 := rest[hdr[5]:]
	hello := make([]byte, 0, len(serverMagic)+2+nonceSize+len(t.keys)*proofSize)
	hello = append(hello, serverMagic...)
	hello = append(hello, protocolVersion)
	ns := make([]byte, nonceSize)
	if _, err := rand.Read(ns); err != nil {
		return nil, nil, err
	}
	hello = append(hello, ns...)
	hello = append(hello, byte(len(t.keys)))
	for _, k := range t.keys {
		hello = append(hello, t.mac(k, nc0, ns, "server proof")...)
	}
	if _, err := nc.Write(hello); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	proof := make([]byte, proofSize)
	if _, err := io.ReadFull(nc, proof); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	key := t.matchKey(nc0, ns, "client proof", proof)
	if key == nil {
		return nil, nil, errUnknownKey
	}
	return t.mac(key, nc0, ns, "server to client"), t.mac(key, nc0, ns, "client to server"), nil
}

// matchKey returns the first of this node's keys that one of proofs
// proves for purpose, or nil.
func (t *TCP) matchKey(nc, ns []byte, purpose string, proofs []byte) []byte {
	for _, k := range t.keys {
		want := t.mac(k, nc, ns, purpose)
		for p := proofs; len(p) >= proofSize; p = p[proofSize:] {
			if hmac.Equal(want, p[:proofSize]) {
				return k
			}
		}
	}
	return nil
}

// mac is HMAC-SHA256 under key of the protocol tag, the label, both
// nonces and what the result is for.
func (t *TCP) mac(key, nc, ns []byte, purpose string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(protocolTag))
	m.Write([]byte{byte(len(t.opts.Label))})
	m.Write([]byte(t.opts.Label))
	m.Write(nc)
	m.Write(ns)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
