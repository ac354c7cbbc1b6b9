package transport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzHandshake feeds arbitrary bytes to the parsers of the handshake
// messages a peer sends before it is authenticated. Neither may panic or
// read past what the message announces, and whatever parses must encode
// back to exactly the bytes read.
func FuzzHandshake(f *testing.F) {
	k1, err := newSharedKey(trKeyOld)
	if err != nil {
		f.Fatal(err)
	}
	k2, err := newSharedKey(trKeyNew)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(appendClientHello(nil, trLabel, []sharedKey{k1, k2}, "n1"))
	f.Add(appendClientHello(nil, "", nil, ""))
	f.Add(append(appendClientHello(nil, "x", []sharedKey{k1}, "a-node"), "trailing"...))
	f.Add([]byte("KRTH\x03\xff"))
	f.Add([]byte("KRTH\x03\x00\x11"))
	f.Add([]byte("KRTH\x03\x00\x00\xff"))
	f.Add(append([]byte("KRTH\x03\x00\x00"), make([]byte, proofSize)...))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		h, raw, err := readClientHello(r)
		if err == nil {
			if consumed := len(b) - r.Len(); consumed != len(raw) || !bytes.Equal(raw, b[:consumed]) {
				t.Fatalf("client hello: raw %x is not the %d bytes read", raw, consumed)
			}
			keys := make([]sharedKey, len(h.ids))
			for i, id := range h.ids {
				keys[i].id = id
			}
			if again := appendClientHello(nil, h.label, keys, h.name); !bytes.Equal(again, raw) {
				t.Fatalf("client hello %x encodes back to %x", raw, again)
			}
			if len(h.ids) > maxKeys || len(h.label) > maxLabel || len(h.name) > maxName {
				t.Fatalf("accepted %d keys, a %d-byte label and a %d-byte name", len(h.ids), len(h.label), len(h.name))
			}
		}
		sh, err := parseServerHello(b)
		if err == nil {
			again := append([]byte(helloMagic), protocolVersion, sh.status, sh.chosen)
			if again = append(again, sh.proof[:]...); !bytes.Equal(again, b) {
				t.Fatalf("server hello %x encodes back to %x", b, again)
			}
		}
	})
}

// FuzzFrameReader feeds an authenticated session's reader arbitrary bytes,
// as a peer holding the key could. It must never panic nor accept a frame
// over the limit, and the frames it returns, framed again, must be exactly
// the bytes it consumed; each payload goes through the request decoder as
// the server does.
func FuzzFrameReader(f *testing.F) {
	frame := func(payload []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
	}
	apply, err := appendRequest(make([]byte, requestHeaderSize), &ApplyRequest{Changes: manyChanges(3)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(frame(apply))
	f.Add(append(frame(apply), frame(nil)...))
	f.Add(frame([]byte{1, 2, 3}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(binary.BigEndian.AppendUint32(nil, minMaxFrame+1))
	f.Add([]byte{0, 0, 0, 9, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		// The bytes come from a reader; the connection only takes the
		// read deadlines.
		a, z := net.Pipe()
		defer a.Close()
		defer z.Close()
		s := &tcpSession{t: &TCP{opts: TCPOptions{MaxFrame: minMaxFrame}}, nc: a, r: bufio.NewReader(bytes.NewReader(b))}
		var again []byte
		for {
			p, err := s.readFrame(time.Second, func() bool { return true })
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, errOversized) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(p) > minMaxFrame {
				t.Fatalf("accepted a %d-byte frame over the %d limit", len(p), minMaxFrame)
			}
			again = append(again, frame(p)...)
			if len(p) >= requestHeaderSize {
				_, _ = decodeRequest(p[requestHeaderSize:])
			}
		}
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("frames read %x are not a prefix of the input", again)
		}
	})
}
