package caserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// servingCertTTL is the lifetime of palisaded's own serving certificate; it is
// renewed at half of it.
const servingCertTTL = time.Hour

// servingCert is palisaded's TLS certificate, issued by its own CA and renewed in
// the background; handshakes read the current one without locking.
type servingCert struct {
	ca       Authority
	dnsNames []string
	now      func() time.Time
	current  atomic.Pointer[tls.Certificate]
}

func newServingCert(ca Authority, dnsNames []string, now func() time.Time) (*servingCert, error) {
	c := &servingCert{ca: ca, dnsNames: dnsNames, now: now}
	if err := c.renew(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *servingCert) renew() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("serving certificate key: %w", err)
	}
	chain, err := c.ca.SignServerCert(key.Public(), ServerID(c.ca.TrustDomain()), c.dnsNames, servingCertTTL)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	c.current.Store(cert)
	return nil
}

// run renews the certificate at half of its lifetime, or soon after a CA change
// (rotation), so that it is always signed by the active CA; failures are retried.
func (c *servingCert) run(ctx context.Context, log *slog.Logger) {
	for {
		leaf := c.current.Load().Leaf
		wait := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2).Sub(c.now())
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-c.ca.Changed():
			timer.Stop()
		case <-timer.C:
		}
		if err := c.renew(); err != nil {
			log.Error("renewing the CA's serving certificate", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
		}
	}
}
