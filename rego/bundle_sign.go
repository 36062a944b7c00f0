package rego

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// BundleSigningAlgorithm is the only algorithm Palisade signs bundles with; OPA's
// keys.NAME.algorithm must name it.
const BundleSigningAlgorithm = "ES256"

// BundleSigner signs bundles so that agents and stock OPAs accept only policy
// that palisaded produced. It holds an ECDSA P-256 private key.
type BundleSigner struct {
	keyID     string
	key       *ecdsa.PrivateKey
	keyPEM    string // PKCS#8, what OPA's SigningConfig parses
	publicPEM []byte
	publicDER []byte
}

// NewBundleSigner loads a P-256 private key (PEM: "EC PRIVATE KEY" or PKCS#8
// "PRIVATE KEY"). keyID goes into each signature's "kid" header, so verifiers
// holding several keys (during a rotation) know which one to use.
func NewBundleSigner(keyID string, privateKeyPEM []byte) (*BundleSigner, error) {
	if keyID == "" {
		return nil, errors.New("bundle signer: empty key id")
	}
	block, _ := pem.Decode(privateKeyPEM)
	if block == nil {
		return nil, errors.New("bundle signer: no PEM block in private key")
	}
	var parsed any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("bundle signer: unsupported PEM block %q (want EC PRIVATE KEY or PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle signer: %w", err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("bundle signer: key is %T, want an ECDSA P-256 key for %s", parsed, BundleSigningAlgorithm)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("bundle signer: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("bundle signer: %w", err)
	}
	return &BundleSigner{
		keyID:     keyID,
		key:       key,
		keyPEM:    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})),
		publicPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
		publicDER: pubDER,
	}, nil
}

// KeyID is the id verifiers must file the public key under (OPA: keys.KEYID).
func (s *BundleSigner) KeyID() string { return s.keyID }

// PublicKeyPEM is what agents and OPAs are configured with to verify this
// signer's bundles.
func (s *BundleSigner) PublicKeyPEM() []byte { return slices.Clone(s.publicPEM) }

// verifier is the matching verifier, used to check every bundle right after
// building it.
func (s *BundleSigner) verifier() *BundleVerifier {
	return &BundleVerifier{keys: map[string]string{s.keyID: string(s.publicPEM)}}
}

// BundleVerifier holds the public keys that a bundle's signature may be made
// with, so that an agent activates only bundles that palisaded signed.
type BundleVerifier struct {
	keys map[string]string // key id → PEM public key
}

// NewBundleVerifier takes P-256 public keys (PEM "PUBLIC KEY") by key id. More
// than one lets signing keys be rotated: the signature's "kid" picks the key.
func NewBundleVerifier(keys map[string][]byte) (*BundleVerifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("bundle verifier: no keys")
	}
	v := &BundleVerifier{keys: make(map[string]string, len(keys))}
	for id, pemBytes := range keys {
		if id == "" {
			return nil, errors.New("bundle verifier: empty key id")
		}
		block, _ := pem.Decode(pemBytes)
		if block == nil || block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("bundle verifier: key %q: want a PEM PUBLIC KEY block", id)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("bundle verifier: key %q: %w", id, err)
		}
		if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("bundle verifier: key %q is %T, want an ECDSA P-256 key for %s", id, pub, BundleSigningAlgorithm)
		}
		v.keys[id] = string(pem.EncodeToMemory(block))
	}
	return v, nil
}

// opaConfig is OPA's form of the verifier. Leaving KeyID empty makes OPA take
// the key named by the signature's "kid".
func (v *BundleVerifier) opaConfig() *bundle.VerificationConfig {
	keys := make(map[string]*bundle.KeyConfig, len(v.keys))
	for _, id := range slices.Sorted(maps.Keys(v.keys)) {
		keys[id] = &bundle.KeyConfig{Key: v.keys[id], Algorithm: BundleSigningAlgorithm}
	}
	return bundle.NewVerificationConfig(keys, "", "", nil)
}

// rfc6979SignerID names Palisade's signing plugin in OPA's signer registry.
// OPA's default signer draws a random ECDSA nonce, so the same bundle would get
// a new signature, and new bytes, each time it is built; RFC 6979 signatures
// are deterministic, which keeps a revision (the ETag) tied to one byte string
// across palisaded restarts and replicas. They verify like any ES256 signature.
const rfc6979SignerID = "palisade-es256-rfc6979"

func init() {
	if err := bundle.RegisterSigner(rfc6979SignerID, rfc6979Signer{}); err != nil {
		panic(err)
	}
}

// rfc6979Signer makes the same JWT as OPA's DefaultSigner (claims "files" and
// "keyid", header "kid"), signed deterministically.
type rfc6979Signer struct{}

func (rfc6979Signer) GenerateSignedToken(files []bundle.FileInfo, sc *bundle.SigningConfig, keyID string) (string, error) {
	if sc.Algorithm != BundleSigningAlgorithm {
		return "", fmt.Errorf("bundle signer: algorithm %q, want %s", sc.Algorithm, BundleSigningAlgorithm)
	}
	parsed, err := sc.GetPrivateKey()
	if err != nil {
		return "", err
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return "", fmt.Errorf("bundle signer: key is %T, want ECDSA", parsed)
	}
	tb := jwt.NewBuilder().Claim("files", files)
	if keyID != "" {
		tb = tb.Claim("keyid", keyID)
	}
	token, err := tb.Build()
	if err != nil {
		return "", err
	}
	hdr := jws.NewHeaders()
	if keyID != "" {
		if err := hdr.Set(jws.KeyIDKey, keyID); err != nil {
			return "", err
		}
	}
	signed, err := jwt.Sign(token, jwt.WithKey(jwa.ES256(), deterministicECDSA{key}, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", err
	}
	return string(signed), nil
}

// deterministicECDSA is a crypto.Signer that asks crypto/ecdsa for an RFC 6979
// signature (a nil random source) whatever source the caller passes.
type deterministicECDSA struct{ key *ecdsa.PrivateKey }

func (d deterministicECDSA) Public() crypto.PublicKey { return &d.key.PublicKey }

func (d deterministicECDSA) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return d.key.Sign(nil, digest, opts)
}
