package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// The signing algorithms the hook accepts, as JWS "alg" values. Each key
// verifies exactly one of them, fixed by its type.
const (
	algRS256 = "RS256"
	algES256 = "ES256"
	algEdDSA = "EdDSA"
)

var validAlgs = []string{algRS256, algES256, algEdDSA}

// minRSABits rejects RSA keys too short to trust.
const minRSABits = 2048

// key is one public key with the algorithm it verifies.
type key struct {
	kid string // empty for static keys and JWKS keys without one
	alg string
	pub crypto.PublicKey
}

// keySet is an immutable set of keys. The hook swaps whole sets through an
// atomic pointer, so readers never see a set being changed.
type keySet struct {
	keys []key
	// waiting is true while a JWKS is configured but has never been fetched.
	waiting bool
}

// find returns the keys that may have signed a token with alg and kid.
// Without a kid, every key for alg is a candidate. A kid selects the keys
// with that id; a kid that no key has falls back to the keys without an id
// (static keys), since an issuer may label tokens that a static key
// verifies.
func (s *keySet) find(alg, kid string) ([]key, error) {
	var out []key
	if kid != "" {
		matched := false
		for _, k := range s.keys {
			if k.kid == kid {
				matched = true
				if k.alg == alg {
					out = append(out, k)
				}
			}
		}
		if matched {
			if len(out) == 0 {
				return nil, errKeyAlgMismatch
			}
			return out, nil
		}
	}
	for _, k := range s.keys {
		if k.alg == alg && (kid == "" || k.kid == "") {
			out = append(out, k)
		}
	}
	switch {
	case len(out) > 0:
		return out, nil
	case s.waiting:
		return nil, errNoKeysYet
	case kid != "":
		return nil, errUnknownKID
	}
	return nil, errNoKeyForAlg
}

// keyFor returns the key for pub, with the algorithm its type implies.
func keyFor(pub crypto.PublicKey) (key, error) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N.BitLen() < minRSABits {
			return key{}, fmt.Errorf("RSA key of %d bits is too short; want at least %d", p.N.BitLen(), minRSABits)
		}
		return key{alg: algRS256, pub: p}, nil
	case *ecdsa.PublicKey:
		if p.Curve != elliptic.P256() {
			return key{}, fmt.Errorf("EC key on %s is not supported; want P-256", p.Curve.Params().Name)
		}
		return key{alg: algES256, pub: p}, nil
	case ed25519.PublicKey:
		return key{alg: algEdDSA, pub: p}, nil
	}
	return key{}, fmt.Errorf("public key of type %T is not supported; want RSA, EC P-256 or Ed25519", pub)
}

// parsePEMKeys reads every PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE block
// in data. Private keys are refused rather than skipped, so that a
// misplaced secret is noticed.
func parsePEMKeys(data []byte) ([]key, error) {
	var keys []key
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		var pub crypto.PublicKey
		var err error
		switch b.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(b.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(b.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(b.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("PEM block %q is not a public key or certificate", b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %q: %w", b.Type, err)
		}
		k, err := keyFor(pub)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}

// jwk is the part of a JSON Web Key (RFC 7517, 7518, 8037) the hook reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS decodes a JWK Set. Keys of types or algorithms the hook does not
// verify, or meant for encryption, are skipped and described in skipped; a
// malformed key of a supported type is an error, as is a set left with no
// usable key.
func parseJWKS(data []byte) (keys []key, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("decode JWKS: %w", err)
	}
	for i, raw := range set.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			return nil, nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		k, skip, err := j.key()
		if err != nil {
			return nil, nil, fmt.Errorf("keys[%d] (kid %q): %w", i, j.Kid, err)
		}
		if skip != "" {
			skipped = append(skipped, fmt.Sprintf("keys[%d] (kid %q): %s", i, j.Kid, skip))
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, skipped, fmt.Errorf("JWKS has no usable key (%d skipped)", len(skipped))
	}
	return keys, skipped, nil
}

// key converts j, or says why it is skipped.
func (j jwk) key() (k key, skip string, err error) {
	if j.Use != "" && j.Use != "sig" {
		return key{}, fmt.Sprintf("use %q is not sig", j.Use), nil
	}
	var pub crypto.PublicKey
	switch {
	case j.Kty == "RSA":
		n, err := b64(j.N, "n", 0)
		if err != nil {
			return key{}, "", err
		}
		e, err := b64(j.E, "e", 0)
		if err != nil {
			return key{}, "", err
		}
		if len(e) == 0 || len(e) > 4 {
			return key{}, "", fmt.Errorf("e has %d bytes; want 1 to 4", len(e))
		}
		ev := new(big.Int).SetBytes(e)
		if ev.Int64() < 3 || ev.Bit(0) == 0 {
			return key{}, "", fmt.Errorf("e = %s is not an odd number of at least 3", ev)
		}
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(ev.Int64())}
	case j.Kty == "EC" && j.Crv == "P-256":
		x, err := b64(j.X, "x", 32)
		if err != nil {
			return key{}, "", err
		}
		y, err := b64(j.Y, "y", 32)
		if err != nil {
			return key{}, "", err
		}
		// ParseUncompressedPublicKey checks that the point is on the curve.
		ec, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return key{}, "", fmt.Errorf("EC point: %w", err)
		}
		pub = ec
	case j.Kty == "OKP" && j.Crv == "Ed25519":
		x, err := b64(j.X, "x", ed25519.PublicKeySize)
		if err != nil {
			return key{}, "", err
		}
		pub = ed25519.PublicKey(x)
	case j.Kty == "EC" || j.Kty == "OKP":
		return key{}, fmt.Sprintf("kty %s with crv %q is not supported", j.Kty, j.Crv), nil
	default:
		return key{}, fmt.Sprintf("kty %q is not supported", j.Kty), nil
	}
	k, err = keyFor(pub)
	if err != nil {
		return key{}, "", err
	}
	if j.Alg != "" && j.Alg != k.alg {
		return key{}, fmt.Sprintf("alg %q is not %s", j.Alg, k.alg), nil
	}
	k.kid = j.Kid
	return k, "", nil
}

// b64 decodes a base64url member, padded or not. size, if not zero, is the
// required decoded length.
func b64(s, name string, size int) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("%s is missing", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("%s is not base64url: %w", name, err)
	}
	if size != 0 && len(b) != size {
		return nil, fmt.Errorf("%s has %d bytes; want %d", name, len(b), size)
	}
	return b, nil
}
