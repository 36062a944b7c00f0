// Package caclient is palisade-agent's side of palisaded's CA API: it obtains
// X.509-SVIDs with a bootstrap token, renews them with the current SVID over mTLS,
// mints JWT-SVIDs and follows the trust bundles. Private keys are made here and
// never leave the process.
package caclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/palisade-mesh/palisade/identity/caserver"
	"github.com/palisade-mesh/palisade/identity/identitypb"
)

// Config configures a Client.
type Config struct {
	// Address of palisaded's CA API, default 127.0.0.1:15012.
	Address     string
	TrustDomain spiffeid.TrustDomain
	// Roots are the trust anchors that vouch for palisaded's serving certificate
	// before the first bundle arrives (palisaded's root-cert.pem).
	Roots []*x509.Certificate
}

// Client talks to palisaded's CA. Safe for concurrent use.
type Client struct {
	cfg      Config
	serverID spiffeid.ID
	// trust is the set of roots that may sign palisaded's serving certificate: the
	// configured roots plus every root of the latest bundle, so that a CA rotation
	// announced in a bundle is followed.
	trust atomic.Pointer[x509bundle.Bundle]

	mu      sync.Mutex
	session *session // the connection authenticated with the latest SVID
}

type session struct {
	leaf *x509.Certificate
	conn *grpc.ClientConn
}

// New makes a Client; it connects lazily.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:15012"
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("caclient: trust domain is required")
	}
	if len(cfg.Roots) == 0 {
		return nil, errors.New("caclient: at least one root certificate is required to trust palisaded")
	}
	c := &Client{cfg: cfg, serverID: caserver.ServerID(cfg.TrustDomain)}
	c.trust.Store(x509bundle.FromX509Authorities(cfg.TrustDomain, cfg.Roots))
	return c, nil
}

// GetX509BundleForTrustDomain makes the client its own source of trust for
// palisaded's certificate.
func (c *Client) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != c.cfg.TrustDomain {
		return nil, fmt.Errorf("palisaded must be in trust domain %q, not %q", c.cfg.TrustDomain, td)
	}
	return c.trust.Load(), nil
}

// learn adds the roots of the CA's own bundle to the trust for palisaded.
func (c *Client) learn(set *spiffebundle.Set) {
	b, ok := set.Get(c.cfg.TrustDomain)
	if !ok {
		return
	}
	merged := x509bundle.FromX509Authorities(c.cfg.TrustDomain, c.cfg.Roots)
	for _, r := range b.X509Authorities() {
		merged.AddX509Authority(r)
	}
	c.trust.Store(merged)
}

func (c *Client) dial(creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(c.cfg.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("CA API %s: %w", c.cfg.Address, err)
	}
	return conn, nil
}

// sessionFor returns a connection that presents svid, replacing the connection of
// an older SVID: the server checks the certificate a connection was opened with, so
// a connection must not outlive its SVID.
func (c *Client) sessionFor(svid *x509svid.SVID) (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.session; s != nil && s.leaf.Equal(svid.Certificates[0]) {
		return s, nil
	}
	conn, err := c.dial(credentials.NewTLS(tlsconfig.MTLSClientConfig(svid, c, tlsconfig.AuthorizeID(c.serverID))))
	if err != nil {
		return nil, err
	}
	if c.session != nil {
		_ = c.session.conn.Close()
	}
	c.session = &session{leaf: svid.Certificates[0], conn: conn}
	return c.session, nil
}

func (s *session) api() identitypb.CertificateAuthorityClient {
	return identitypb.NewCertificateAuthorityClient(s.conn)
}

// drop forgets s when a call on it found palisaded unreachable, so that the next
// call dials at once: gRPC's own reconnect backoff grows to minutes during a long
// outage, and retries must follow the keeper's backoff instead.
func (c *Client) drop(s *session, err error) {
	if status.Code(err) != codes.Unavailable {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session == s {
		_ = s.conn.Close()
		c.session = nil
	}
}

// Close closes the client's connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session == nil {
		return nil
	}
	err := c.session.conn.Close()
	c.session = nil
	return err
}

// SignWithToken obtains the first X.509-SVID of id with a bootstrap token.
func (c *Client) SignWithToken(ctx context.Context, id spiffeid.ID, token string, ttl time.Duration) (*x509svid.SVID, *spiffebundle.Set, error) {
	conn, err := c.dial(credentials.NewTLS(tlsconfig.TLSClientConfig(c, tlsconfig.AuthorizeID(c.serverID))))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	return c.sign(ctx, identitypb.NewCertificateAuthorityClient(conn), id, ttl)
}

// Renew obtains a new X.509-SVID, with a new key, for the identity of current,
// authenticating with current.
func (c *Client) Renew(ctx context.Context, current *x509svid.SVID, ttl time.Duration) (*x509svid.SVID, *spiffebundle.Set, error) {
	s, err := c.sessionFor(current)
	if err != nil {
		return nil, nil, err
	}
	svid, set, err := c.sign(ctx, s.api(), current.ID, ttl)
	c.drop(s, err)
	return svid, set, err
}

func (c *Client) sign(ctx context.Context, api identitypb.CertificateAuthorityClient, id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, *spiffebundle.Set, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("CSR: %w", err)
	}
	resp, err := api.SignX509SVID(ctx, &identitypb.SignX509SVIDRequest{Csr: csr, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		return nil, nil, err
	}
	var chain []byte
	for _, der := range resp.GetCertChain() {
		chain = append(chain, der...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	svid, err := x509svid.ParseRaw(chain, keyDER)
	if err != nil {
		return nil, nil, fmt.Errorf("CA answer: %w", err)
	}
	if svid.ID != id {
		return nil, nil, fmt.Errorf("CA answer: issued %s, asked for %s", svid.ID, id)
	}
	set, err := c.parseBundles(resp.GetBundles())
	if err != nil {
		return nil, nil, err
	}
	return svid, set, nil
}

// parseBundles reads bundles sent by the CA and follows the CA's own roots.
func (c *Client) parseBundles(in *identitypb.Bundles) (*spiffebundle.Set, error) {
	set := spiffebundle.NewSet()
	for _, b := range in.GetBundles() {
		td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain())
		if err != nil {
			return nil, fmt.Errorf("CA answer: bundle: %w", err)
		}
		bundle, err := spiffebundle.Parse(td, b.GetSpiffeBundle())
		if err != nil {
			return nil, fmt.Errorf("CA answer: bundle of %s: %w", td, err)
		}
		set.Add(bundle)
	}
	if !set.Has(c.cfg.TrustDomain) {
		return nil, fmt.Errorf("CA answer: no bundle for trust domain %s", c.cfg.TrustDomain)
	}
	c.learn(set)
	return set, nil
}

// MintJWT obtains a JWT-SVID for the identity of svid.
func (c *Client) MintJWT(ctx context.Context, svid *x509svid.SVID, audience []string, ttl time.Duration) (*jwtsvid.SVID, error) {
	s, err := c.sessionFor(svid)
	if err != nil {
		return nil, err
	}
	resp, err := s.api().MintJWTSVID(ctx, &identitypb.MintJWTSVIDRequest{Audience: audience, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		c.drop(s, err)
		return nil, err
	}
	// The token came from palisaded over an authenticated channel; the signature
	// is checked by whoever receives it.
	jwt, err := jwtsvid.ParseInsecure(resp.GetToken(), audience)
	if err != nil {
		return nil, fmt.Errorf("CA answer: JWT-SVID: %w", err)
	}
	return jwt, nil
}

// WatchBundles calls fn with the trust bundles now and on every change, until the
// stream ends (an error, ctx, or a newer SVID replacing the connection).
func (c *Client) WatchBundles(ctx context.Context, svid *x509svid.SVID, fn func(*spiffebundle.Set)) error {
	s, err := c.sessionFor(svid)
	if err != nil {
		return err
	}
	stream, err := s.api().WatchBundles(ctx, &identitypb.WatchBundlesRequest{})
	if err != nil {
		c.drop(s, err)
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			c.drop(s, err)
			return err
		}
		set, err := c.parseBundles(msg)
		if err != nil {
			return err
		}
		fn(set)
	}
}
