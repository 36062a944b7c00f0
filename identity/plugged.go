package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// pluggedCA is an operator-provided CA in Istio's "cacerts" layout.
type pluggedCA struct {
	signer    x509Signer
	roots     []*x509.Certificate
	notBefore time.Time // of ca-cert; with signer.notAfter, the lifetime the expiry warning uses
}

// loadPlugged reads and checks a cacerts directory: the key must match ca-cert, and
// ca-cert must chain (through cert-chain) to root-cert at time now. Istio's own
// cert-chain.pem often repeats ca-cert and the root; both are dropped so that the
// chain sent after a leaf holds exactly the intermediates.
func loadPlugged(dir string, now time.Time) (*pluggedCA, error) {
	read := func(name string) ([]byte, error) {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("plugged CA: %w", err)
		}
		return data, nil
	}
	readCerts := func(name string) ([]*x509.Certificate, error) {
		data, err := read(name)
		if err != nil {
			return nil, err
		}
		certs, err := parseCertsPEM(data)
		if err != nil {
			return nil, fmt.Errorf("plugged CA: %s: %w", name, err)
		}
		return certs, nil
	}

	caCerts, err := readCerts("ca-cert.pem")
	if err != nil {
		return nil, err
	}
	if len(caCerts) != 1 {
		return nil, fmt.Errorf("plugged CA: ca-cert.pem: want one certificate, got %d", len(caCerts))
	}
	caCert := caCerts[0]
	if !caCert.IsCA || (caCert.KeyUsage != 0 && caCert.KeyUsage&x509.KeyUsageCertSign == 0) {
		return nil, errors.New("plugged CA: ca-cert.pem is not a CA certificate allowed to sign certificates")
	}
	keyPEM, err := read("ca-key.pem")
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("plugged CA: ca-key.pem: %w", err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(caCert.PublicKey) {
		return nil, errors.New("plugged CA: ca-key.pem does not match the public key of ca-cert.pem")
	}
	roots, err := readCerts("root-cert.pem")
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	if _, err := os.Stat(filepath.Join(dir, "cert-chain.pem")); err == nil {
		all, err := readCerts("cert-chain.pem")
		if err != nil {
			return nil, err
		}
		for _, cert := range all {
			if !cert.Equal(caCert) && !slices.ContainsFunc(roots, cert.Equal) {
				chain = append(chain, cert)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("plugged CA: %w", err)
	}

	verified, err := caCert.Verify(x509.VerifyOptions{
		Roots:         poolOf(roots),
		Intermediates: poolOf(chain),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("plugged CA: ca-cert.pem does not chain to root-cert.pem: %w", err)
	}
	// A leaf is only good while every certificate above it is; take the earliest
	// expiry over ca-cert, the intermediates sent and the root reached.
	notAfter := caCert.NotAfter
	for _, cert := range append(slices.Clone(chain), verified[0]...) {
		if cert.NotAfter.Before(notAfter) {
			notAfter = cert.NotAfter
		}
	}
	return &pluggedCA{
		signer: x509Signer{
			cert:     caCert,
			key:      key,
			chain:    append([]*x509.Certificate{caCert}, chain...),
			notAfter: notAfter,
			leaf:     newLeafProfile(caCert, key),
		},
		roots:     roots,
		notBefore: caCert.NotBefore,
	}, nil
}

// parsePrivateKeyPEM accepts the key encodings openssl and Istio's tools write:
// PKCS#8, PKCS#1 (RSA) and SEC 1 (EC).
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q, want a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

func poolOf(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, cert := range certs {
		pool.AddCert(cert)
	}
	return pool
}

// warnPluggedExpiry logs, at most hourly, once less than a quarter of the plugged
// CA's lifetime is left: the CA never rotates it, so an operator has to.
func (c *CA) warnPluggedExpiry(now time.Time) {
	p := c.plugged
	life := p.signer.notAfter.Sub(p.notBefore)
	left := p.signer.notAfter.Sub(now)
	if left >= life/4 || now.Sub(c.lastExpiryWarned) < time.Hour {
		return
	}
	c.lastExpiryWarned = now
	c.log.Warn("plugged CA certificate expires soon; replace the files in the plugged cert directory",
		"expires", p.signer.notAfter, "left", left.Round(time.Second), "subject", p.signer.cert.Subject.String())
}
