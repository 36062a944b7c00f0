package policygen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
)

// Issuer and Audience are the claims of the tokens the benchmarks send, and what
// their RequestAuthentications accept.
const (
	Issuer   = "https://auth.palisade.dev"
	Audience = "reviews"
)

// FarFuture is an expiry no benchmark outlives (2100-01-01).
const FarFuture = 4102444800

// Signer signs ES256 JWTs with one P-256 key, whose public half JWKS gives for a
// RequestAuthentication's jwks.
type Signer struct {
	Key   *ecdsa.PrivateKey
	KeyID string
}

// NewSigner makes a signer with a fresh key.
func NewSigner(keyID string) (*Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Signer{Key: key, KeyID: keyID}, nil
}

// ParseSigner reads a signer's key from PEM (PKCS #8 or SEC 1).
func ParseSigner(pemBytes []byte, keyID string) (*Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	if block.Type == "EC PRIVATE KEY" {
		key, err = x509.ParseECPrivateKey(block.Bytes)
	} else {
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, err
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("not a P-256 ECDSA key")
	}
	return &Signer{Key: ec, KeyID: keyID}, nil
}

// KeyPEM is the private key in PKCS #8 PEM.
func (s *Signer) KeyPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(s.Key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// JWKS is the JSON Web Key Set of the public key.
func (s *Signer) JWKS() string {
	point, err := s.Key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		panic(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	bs, _ := json.Marshal(map[string]any{"keys": []any{map[string]any{
		"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": s.KeyID,
		"x": b64(point[1:33]), "y": b64(point[33:]),
	}}})
	return string(bs)
}

// Token signs claims as an ES256 JWT.
func (s *Signer) Token(claims map[string]any) string {
	b64 := base64.RawURLEncoding.EncodeToString
	header, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "kid": s.KeyID})
	payload, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	signed := b64(header) + "." + b64(payload)
	digest := sha256.Sum256([]byte(signed))
	r, ss, err := ecdsa.Sign(rand.Reader, s.Key, digest[:])
	if err != nil {
		panic(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return signed + "." + b64(sig)
}

// UserToken is a token of Issuer for Audience, as a login would give user:
// subject, groups, issued long ago, expiring in FarFuture.
func (s *Signer) UserToken(user string, groups ...string) string {
	return s.Token(Claims(user, groups...))
}

// Claims are the claims of UserToken, to be changed for tokens that should fail.
func Claims(user string, groups ...string) map[string]any {
	g := make([]any, len(groups))
	for i, x := range groups {
		g[i] = x
	}
	return map[string]any{
		"iss": Issuer, "sub": user, "aud": []any{Audience}, "groups": g,
		"iat": 1700000000, "nbf": 1700000000, "exp": FarFuture,
		"email": fmt.Sprintf("%s@palisade.dev", user),
	}
}
