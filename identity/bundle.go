package identity

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// bundleRefreshHint tells bundle consumers how often to poll. Prepared keys are
// published a quarter of the CA lifetime before use, so this only needs to be short
// enough that a removed key disappears soon.
const bundleRefreshHint = 5 * time.Minute

// Bundle returns the trust domain's SPIFFE bundle: every root and JWT key currently
// trusted (current, prepared next, and retired ones until they expire; a plugged
// CA's roots). Its sequence number increases with every change. The result is the
// caller's to keep or modify.
func (c *CA) Bundle() *spiffebundle.Bundle {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.bundle.Clone()
}

// FederatedBundles returns the configured bundles of foreign trust domains, sorted
// by trust domain. The results are the caller's to keep or modify.
func (c *CA) FederatedBundles() []*spiffebundle.Bundle {
	out := make([]*spiffebundle.Bundle, len(c.federated))
	for i, b := range c.federated {
		out[i] = b.Clone()
	}
	return out
}

// Changed returns a channel that is closed at the next change of Bundle(). Call it
// again after it fires, before reading Bundle(), to not miss a change.
func (c *CA) Changed() <-chan struct{} {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.changed
}

// buildBundle returns the bundle of st and a digest of its content, which decides
// whether the sequence number must move.
func (c *CA) buildBundle(st state) (*spiffebundle.Bundle, string) {
	b := spiffebundle.New(c.td)
	b.SetRefreshHint(bundleRefreshHint)
	if c.plugged != nil {
		for _, root := range c.plugged.roots {
			b.AddX509Authority(root)
		}
	}
	for _, s := range st.all() {
		if s.root != nil {
			b.AddX509Authority(s.root)
		}
		// Keys are only ever ECDSA P-256 with non-empty IDs, which AddJWTAuthority accepts.
		_ = b.AddJWTAuthority(s.jwtKeyID, s.jwtKey.Public())
	}
	return b, bundleDigest(b)
}

// bundleDigest hashes the authorities in a canonical order.
func bundleDigest(b *spiffebundle.Bundle) string {
	h := sha256.New()
	roots := b.X509Authorities()
	slices.SortFunc(roots, func(x, y *x509.Certificate) int { return bytes.Compare(x.Raw, y.Raw) })
	for _, root := range roots {
		fmt.Fprintf(h, "x509:%x\n", root.Raw)
	}
	keys := b.JWTAuthorities()
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		der, _ := x509.MarshalPKIXPublicKey(keys[kid]) // cannot fail for the CA's ECDSA keys
		fmt.Fprintf(h, "jwt:%q:%x\n", kid, der)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// LoadFederatedBundle parses a foreign trust domain's bundle from a file's content:
// a SPIFFE bundle (JWKS JSON with x509-svid and jwt-svid keys) or PEM certificates
// (X.509 authorities only).
func LoadFederatedBundle(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	if td.IsZero() {
		return nil, errors.New("federated bundle: trust domain is required")
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("federated bundle for %s: empty", td)
	}
	if trimmed[0] == '{' {
		b, err := spiffebundle.Parse(td, trimmed)
		if err != nil {
			return nil, fmt.Errorf("federated bundle for %s: %w", td, err)
		}
		if b.Empty() {
			return nil, fmt.Errorf("federated bundle for %s: no X.509 or JWT authorities", td)
		}
		return b, nil
	}
	certs, err := parseCertsPEM(trimmed)
	if err != nil {
		return nil, fmt.Errorf("federated bundle for %s: neither SPIFFE bundle JSON nor PEM certificates: %w", td, err)
	}
	return spiffebundle.FromX509Authorities(td, certs), nil
}

// WriteRoots writes the X.509 roots of Bundle() to path as PEM, atomically and
// readable by all: agents start from it to trust palisaded.
func (c *CA) WriteRoots(path string) error {
	return writeFileAtomic(path, c.RootsPEM(), true)
}

// RootsPEM returns the trust domain's X.509 roots in PEM, as root-cert.pem holds them.
func (c *CA) RootsPEM() []byte {
	var buf []byte
	for _, root := range c.Bundle().X509Authorities() {
		buf = append(buf, encodeCertPEM(root)...)
	}
	return buf
}
