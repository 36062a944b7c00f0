package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	// ErrInvalidCSR reports a CSR that is malformed or asks for something an
	// X.509-SVID must not have. Errors wrap it with the details.
	ErrInvalidCSR = errors.New("invalid CSR")
	// ErrIdentityMismatch reports a request for another SPIFFE ID than the caller
	// may have (or one outside the CA's trust domain).
	ErrIdentityMismatch = errors.New("CSR identity mismatch")
)

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// ValidateCSR parses a DER CSR and checks that it asks for exactly the identity want
// and nothing else: a valid self-signature, an ECDSA P-256 key, one URI SAN equal to
// want, no DNS, IP or email SANs and no CA basic constraint. The subject is ignored
// (and never copied into a certificate), so it may be empty.
func ValidateCSR(der []byte, want spiffeid.ID) (*x509.CertificateRequest, error) {
	if want.IsZero() {
		return nil, fmt.Errorf("%w: no SPIFFE ID to check the CSR against", ErrIdentityMismatch)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: not a DER-encoded PKCS #10 request: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %w", ErrInvalidCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	switch {
	case len(csr.DNSNames) > 0:
		return nil, fmt.Errorf("%w: DNS SANs are not allowed, got %q", ErrInvalidCSR, csr.DNSNames)
	case len(csr.IPAddresses) > 0:
		return nil, fmt.Errorf("%w: IP SANs are not allowed, got %v", ErrInvalidCSR, csr.IPAddresses)
	case len(csr.EmailAddresses) > 0:
		return nil, fmt.Errorf("%w: email SANs are not allowed, got %q", ErrInvalidCSR, csr.EmailAddresses)
	case len(csr.URIs) != 1:
		return nil, fmt.Errorf("%w: want exactly one URI SAN, got %d", ErrInvalidCSR, len(csr.URIs))
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA bool `asn1:"optional"`
			// The path length is irrelevant here, but must be accepted to parse.
			MaxPathLen int `asn1:"optional,default:-1"`
		}
		if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) > 0 {
			return nil, fmt.Errorf("%w: malformed basic constraints extension", ErrInvalidCSR)
		}
		if bc.IsCA {
			return nil, fmt.Errorf("%w: requests a CA certificate (basic constraints CA=true)", ErrInvalidCSR)
		}
	}
	got, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %w", ErrInvalidCSR, csr.URIs[0], err)
	}
	// Compare the serialized forms too: they are what ends up in the certificate, and
	// this rules out any normalization difference between the URL and the parsed ID.
	if got != want || csr.URIs[0].String() != want.String() {
		return nil, fmt.Errorf("%w: CSR asks for %q, caller may only have %q", ErrIdentityMismatch, csr.URIs[0], want)
	}
	return csr, nil
}

// checkPublicKey accepts only ECDSA P-256, the one key type every SPIFFE library and
// TLS stack supports, so the mesh never hands out certificates some peer rejects.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return nil
		}
		curve := "an unknown curve"
		if k.Curve != nil {
			curve = k.Curve.Params().Name
		}
		return fmt.Errorf("public key must be ECDSA P-256, got ECDSA on %s", curve)
	case *rsa.PublicKey:
		return fmt.Errorf("public key must be ECDSA P-256, got RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return errors.New("public key must be ECDSA P-256, got Ed25519")
	default:
		return fmt.Errorf("public key must be ECDSA P-256, got %T", pub)
	}
}
