package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MinTTL is the shortest SVID lifetime the CA accepts: anything shorter would expire
// before a workload could use and rotate it.
const MinTTL = 10 * time.Second

const (
	defaultCATTL      = 365 * 24 * time.Hour
	defaultSVIDTTL    = time.Hour
	defaultMaxSVIDTTL = 24 * time.Hour
	defaultJWTTTL     = 5 * time.Minute
	// clockSkew backdates NotBefore so that peers whose clocks run a little behind
	// accept a certificate as soon as it is issued.
	clockSkew = time.Minute
)

// ErrInvalidTTL reports a requested lifetime the CA does not accept.
var ErrInvalidTTL = errors.New("invalid TTL")

// CAConfig configures the CA. Zero values get defaults.
type CAConfig struct {
	// TrustDomain is the trust domain the CA issues identities in. Required.
	TrustDomain spiffeid.TrustDomain
	// DataDir holds the CA state in DataDir/ca (directory 0700, files 0600). Required.
	DataDir string
	// PluggedCertDir, when set, is an existing CA in Istio's "cacerts" layout:
	// ca-cert.pem (the signing certificate), ca-key.pem, root-cert.pem (the roots
	// to trust, may hold several) and optionally cert-chain.pem (intermediates
	// from ca-cert up to the root). X.509-SVIDs are then signed with it, and the
	// CA never rotates it; JWT keys still rotate.
	PluggedCertDir string
	// CATTL is the lifetime of a self-generated root and of a JWT key. Default 8760h.
	CATTL time.Duration
	// DefaultSVIDTTL is the X.509-SVID lifetime when a request asks for none. Default 1h.
	DefaultSVIDTTL time.Duration
	// MaxSVIDTTL caps requested SVID lifetimes (X.509 and JWT). Default 24h.
	MaxSVIDTTL time.Duration
	// DefaultJWTTTL is the JWT-SVID lifetime when a request asks for none. Default 5m.
	DefaultJWTTTL time.Duration
	// Federated are foreign trust domains' bundles to trust.
	Federated []*spiffebundle.Bundle
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// CA is the SPIFFE certificate authority of one trust domain. It is safe for
// concurrent use. Call Run (or Tick periodically) to rotate its keys.
type CA struct {
	td        spiffeid.TrustDomain
	dir       string
	caTTL     time.Duration
	svidTTL   time.Duration
	maxTTL    time.Duration
	jwtTTL    time.Duration
	now       func() time.Time
	log       *slog.Logger
	plugged   *pluggedCA // nil when the CA manages its own roots
	federated []*spiffebundle.Bundle

	// tickMu serializes state transitions, so that key generation and disk writes
	// happen without holding mu, which signers take.
	tickMu           sync.Mutex
	lastExpiryWarned time.Time

	mu      sync.RWMutex
	st      state
	bundle  *spiffebundle.Bundle
	changed chan struct{}
}

// NewCA loads the CA state from DataDir/ca, or creates a self-signed root and a JWT
// key on first start, and brings the rotation state up to the current time.
func NewCA(cfg CAConfig) (*CA, error) {
	c, err := configure(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory: %w", err)
	}
	// MkdirAll keeps an existing directory's mode; CA keys must not be readable by others.
	if err := os.Chmod(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict CA directory: %w", err)
	}
	now := c.now()
	if cfg.PluggedCertDir != "" {
		if c.plugged, err = loadPlugged(cfg.PluggedCertDir, now); err != nil {
			return nil, err
		}
	}
	st, found, err := loadJournal(c.dir)
	if err != nil {
		return nil, err
	}
	if !found {
		s, err := c.newSlot(1, now)
		if err != nil {
			return nil, err
		}
		st = state{current: s, nextID: 2}
		c.log.Info("created CA state", "trust_domain", c.td.Name(), "dir", c.dir, "slot", s.id, "expires", s.notAfter)
	}
	if st, _, err = c.advance(st, now); err != nil {
		return nil, err
	}
	c.changed = make(chan struct{})
	// Commit even without a transition: plugged roots may differ from the last run,
	// and that must bump the bundle's sequence number.
	if err := c.commit(st); err != nil {
		return nil, err
	}
	return c, nil
}

func configure(cfg CAConfig) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("CA config: trust domain is required")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("CA config: data directory is required")
	}
	c := &CA{
		td:      cfg.TrustDomain,
		dir:     filepath.Join(cfg.DataDir, "ca"),
		caTTL:   orDefault(cfg.CATTL, defaultCATTL),
		svidTTL: orDefault(cfg.DefaultSVIDTTL, defaultSVIDTTL),
		maxTTL:  orDefault(cfg.MaxSVIDTTL, defaultMaxSVIDTTL),
		jwtTTL:  orDefault(cfg.DefaultJWTTTL, defaultJWTTTL),
		now:     cfg.Now,
		log:     cfg.Logger,
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	switch {
	case c.caTTL < time.Minute:
		return nil, fmt.Errorf("CA config: CA TTL %v is below 1m", c.caTTL)
	case c.maxTTL < MinTTL:
		return nil, fmt.Errorf("CA config: max SVID TTL %v is below the minimum %v", c.maxTTL, MinTTL)
	case c.svidTTL < MinTTL || c.svidTTL > c.maxTTL:
		return nil, fmt.Errorf("CA config: default SVID TTL %v is outside [%v, %v]", c.svidTTL, MinTTL, c.maxTTL)
	case c.jwtTTL < MinTTL || c.jwtTTL > c.maxTTL:
		return nil, fmt.Errorf("CA config: default JWT TTL %v is outside [%v, %v]", c.jwtTTL, MinTTL, c.maxTTL)
	}
	for _, b := range cfg.Federated {
		switch {
		case b == nil:
			return nil, errors.New("CA config: nil federated bundle")
		case b.TrustDomain() == c.td:
			return nil, fmt.Errorf("CA config: federated bundle for the CA's own trust domain %s", c.td)
		case slices.ContainsFunc(c.federated, func(o *spiffebundle.Bundle) bool { return o.TrustDomain() == b.TrustDomain() }):
			return nil, fmt.Errorf("CA config: two federated bundles for trust domain %s", b.TrustDomain())
		}
		// Clone so that later changes by the caller cannot alter what the CA serves.
		c.federated = append(c.federated, b.Clone())
	}
	slices.SortFunc(c.federated, func(a, b *spiffebundle.Bundle) int { return a.TrustDomain().Compare(b.TrustDomain()) })
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// TrustDomain returns the trust domain the CA issues identities in.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// SignX509SVID validates the CSR (see ValidateCSR) for exactly the identity id and
// signs an X.509-SVID for it. ttl <= 0 means the default; a ttl above the maximum is
// clamped; the SVID never outlives the certificate that signs it. The returned chain
// starts with the leaf, followed by the certificates a peer needs to reach a root of
// Bundle(): none for a self-managed root, ca-cert and cert-chain for a plugged CA.
func (c *CA) SignX509SVID(csrDER []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, err := ValidateCSR(csrDER, id)
	if err != nil {
		return nil, err
	}
	return c.sign(csr.PublicKey, id, nil, nil, ttl)
}

// SignServerCert is SignX509SVID for a key the caller holds, with DNS SANs added
// (IP SANs for names that are IP addresses, for a server reached by address, such as
// a webhook registered with url https://127.0.0.1:PORT). It is for palisaded's own
// serving certificate only: names must never come from a workload's request. The
// key must be ECDSA P-256.
func (c *CA) SignServerCert(pub crypto.PublicKey, id spiffeid.ID, names []string, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	var dnsNames []string
	var ips []net.IP
	for _, name := range names {
		if name == "" {
			return nil, errors.New("empty DNS name")
		}
		if ip := net.ParseIP(name); ip != nil {
			ips = append(ips, ip)
		} else {
			dnsNames = append(dnsNames, name)
		}
	}
	return c.sign(pub, id, dnsNames, ips, ttl)
}

func (c *CA) sign(pub crypto.PublicKey, id spiffeid.ID, dnsNames []string, ips []net.IP, ttl time.Duration) ([]*x509.Certificate, error) {
	if !id.MemberOf(c.td) {
		return nil, fmt.Errorf("%w: %s is not in trust domain %s", ErrIdentityMismatch, id, c.td)
	}
	ttl, err := c.effectiveTTL(ttl, c.svidTTL)
	if err != nil {
		return nil, err
	}
	now := c.now()
	s := c.x509Signer()
	notAfter := minTime(now.Add(ttl), s.notAfter)
	if !notAfter.After(now) {
		return nil, fmt.Errorf("signing CA certificate expired at %s", s.notAfter.Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	der, err := s.issue(leafRequest{
		serial:      serial,
		notBefore:   now.Add(-clockSkew),
		notAfter:    notAfter,
		pub:         pub,
		uri:         id.URL(),
		dnsNames:    dnsNames,
		ipAddresses: ips,
	})
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	return append([]*x509.Certificate{leaf}, s.chain...), nil
}

// effectiveTTL applies the TTL rules shared by X.509 and JWT SVIDs.
func (c *CA) effectiveTTL(ttl, def time.Duration) (time.Duration, error) {
	switch {
	case ttl <= 0:
		return def, nil
	case ttl < MinTTL:
		return 0, fmt.Errorf("%w: %v is below the minimum of %v", ErrInvalidTTL, ttl, MinTTL)
	case ttl > c.maxTTL:
		return c.maxTTL, nil
	}
	return ttl, nil
}

// x509Signer is what issues leaves: a key, its certificate, the certificates a
// leaf's chain carries after the leaf, and the instant no leaf may outlive.
type x509Signer struct {
	cert     *x509.Certificate
	key      crypto.Signer
	chain    []*x509.Certificate
	notAfter time.Time
	leaf     *leafProfile // see leaf.go; nil to sign with x509.CreateCertificate
}

func (c *CA) x509Signer() x509Signer {
	if c.plugged != nil {
		return c.plugged.signer
	}
	c.mu.RLock()
	cur := c.st.current
	c.mu.RUnlock()
	// Peers trust the root through the bundle, so the chain does not repeat it.
	return x509Signer{cert: cur.root, key: cur.rootKey, notAfter: cur.root.NotAfter, leaf: cur.leaf}
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random 128-bit serial number in [1, 2^128]: RFC 5280 wants
// it positive, and unpredictable serials defeat chosen-prefix collision attacks.
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
