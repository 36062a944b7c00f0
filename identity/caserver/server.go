// Package caserver serves palisaded's certificate authority over gRPC with TLS
// (the CSR API on 15012), the SPIFFE bundle endpoint for federation, and the admin
// API on a Unix socket that creates bootstrap tokens.
package caserver

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/palisade-mesh/palisade/identity/identitypb"
	"github.com/palisade-mesh/palisade/identity/kubetoken"
)

// Authority is what the server needs from the CA.
type Authority interface {
	TrustDomain() spiffeid.TrustDomain
	SignX509SVID(csrDER []byte, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error)
	SignServerCert(pub crypto.PublicKey, id spiffeid.ID, dnsNames []string, ttl time.Duration) ([]*x509.Certificate, error)
	MintJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, time.Time, error)
	Bundle() *spiffebundle.Bundle
	FederatedBundles() []*spiffebundle.Bundle
	Changed() <-chan struct{}
}

// TokenRedeemer spends single-use bootstrap tokens.
type TokenRedeemer interface {
	Redeem(token string) (spiffeid.ID, error)
}

// Config configures the CSR API server.
type Config struct {
	// Address to listen on, default 127.0.0.1:15012.
	Address string
	CA      Authority
	Tokens  TokenRedeemer
	// ServiceAccountTokens, if set, redeems Kubernetes service-account tokens (JWTs,
	// told apart from bootstrap tokens by their shape), reviewed by the API server.
	ServiceAccountTokens TokenRedeemer
	// DNSNames go into palisaded's serving certificate besides its SPIFFE ID, for
	// clients that check a host name.
	DNSNames   []string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// ServerID is the SPIFFE ID palisaded presents on its TLS endpoints. It lies outside
// the workload namespace (spiffe://TD/ns/NS/sa/SA), so no token can be made for it.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/palisaded")
}

// Server is the CSR API.
type Server struct {
	identitypb.UnimplementedCertificateAuthorityServer
	cfg     Config
	log     *slog.Logger
	cert    *servingCert
	metrics *metrics

	// verified remembers client certificates already verified against the bundle
	// of one generation, so that a connection pays for chain verification once,
	// not on every call (it was a third of the CPU of an issuance).
	verified      sync.Map // *x509.Certificate → verifiedPeer
	verifiedCount atomic.Int64
	// bundleCache is the bundles of the latest generation, marshalled once.
	bundleCache atomic.Pointer[cachedBundles]
}

type verifiedPeer struct {
	id         spiffeid.ID
	generation <-chan struct{} // the CA's Changed() when verified
}

type cachedBundles struct {
	generation <-chan struct{}
	bundles    *identitypb.Bundles
}

// maxVerified bounds the verification cache; connections that closed leave their
// entries behind, so it is emptied when full.
const maxVerified = 4096

var errInvalidRequest = errors.New("invalid request")

// New checks the configuration and issues palisaded's first serving certificate.
func New(cfg Config) (*Server, error) {
	if cfg.CA == nil || cfg.Tokens == nil {
		return nil, errors.New("caserver: CA and Tokens are required")
	}
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:15012"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cert, err := newServingCert(cfg.CA, cfg.DNSNames, cfg.Now)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: cfg.Logger, cert: cert, metrics: newMetrics(cfg.Registerer)}, nil
}

// ServingCertificate returns palisaded's current serving certificate (its SPIFFE ID
// and DNSNames, signed by its CA and renewed by Serve), for palisaded's other TLS
// servers: the admission webhooks present it too.
func (s *Server) ServingCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.current.Load(), nil
}

// TLSConfig is the server side of every palisaded TLS endpoint: the current serving
// certificate, and a client certificate requested but checked per call, so that a
// token caller (no certificate) and a renewing caller share the port and an expired
// certificate gets a clear error instead of a failed handshake.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.ServingCertificate,
		ClientAuth:     tls.RequestClientCert,
	}
}

// Listen binds the CSR API's address.
func (s *Server) Listen() (net.Listener, error) {
	l, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("CA API: %w", err)
	}
	return l, nil
}

// Serve serves the CSR API on l until ctx ends, renewing the serving certificate.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(s.TLSConfig())),
		// Reuse goroutines (and their grown stacks) across calls: issuance is short
		// work, where starting a goroutine per call is measurable.
		grpc.NumStreamWorkers(uint32(runtime.NumCPU())),
		grpc.ChainUnaryInterceptor(s.metrics.unary),
		grpc.ChainStreamInterceptor(s.metrics.stream),
	)
	identitypb.RegisterCertificateAuthorityServer(g, s)
	go s.cert.run(ctx, s.log)
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	s.log.Info("CA API serving", "address", l.Addr().String(), "trustDomain", s.cfg.CA.TrustDomain().String())
	if err := g.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// authenticate returns the identity the caller may have: the one its bootstrap token
// was created for (spending the token), or the SPIFFE ID of its valid client
// certificate from this trust domain.
func (s *Server) authenticate(ctx context.Context, tokenAllowed bool) (spiffeid.ID, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if auth := md.Get("authorization"); len(auth) > 0 {
		if !tokenAllowed {
			return spiffeid.ID{}, fmt.Errorf("%w: a bootstrap token is only good for a first X.509-SVID; authenticate with the SVID", errUnauthenticated)
		}
		token, ok := strings.CutPrefix(auth[0], "Bearer ")
		if !ok {
			return spiffeid.ID{}, fmt.Errorf("%w: authorization metadata must be \"Bearer TOKEN\"", errUnauthenticated)
		}
		if s.cfg.ServiceAccountTokens != nil && kubetoken.IsServiceAccountToken(token) {
			return s.cfg.ServiceAccountTokens.Redeem(token)
		}
		return s.cfg.Tokens.Redeem(token)
	}
	p, ok := peer.FromContext(ctx)
	var certs []*x509.Certificate
	if ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			certs = info.State.PeerCertificates
		}
	}
	if len(certs) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: present a bootstrap token, a service-account token or an X.509-SVID client certificate", errUnauthenticated)
	}
	return s.verifyPeer(certs)
}

// verifyPeer checks a client certificate chain against the CA's current bundle.
func (s *Server) verifyPeer(certs []*x509.Certificate) (spiffeid.ID, error) {
	generation, now, leaf := s.cfg.CA.Changed(), s.cfg.Now(), certs[0]
	if v, ok := s.verified.Load(leaf); ok {
		v := v.(verifiedPeer)
		if v.generation == generation && !now.Before(leaf.NotBefore) && !now.After(leaf.NotAfter) {
			return v.id, nil
		}
	}
	id, _, err := x509svid.Verify(certs, s.cfg.CA.Bundle(), x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: client certificate: %w", errUnauthenticated, err)
	}
	if id.TrustDomain() != s.cfg.CA.TrustDomain() {
		return spiffeid.ID{}, fmt.Errorf("%w: client certificate is from trust domain %q, not %q", errUnauthenticated, id.TrustDomain(), s.cfg.CA.TrustDomain())
	}
	if s.verifiedCount.Add(1) > maxVerified {
		s.verified.Clear()
		s.verifiedCount.Store(1)
	}
	s.verified.Store(leaf, verifiedPeer{id: id, generation: generation})
	return id, nil
}

func requestedTTL(seconds int64) (time.Duration, error) {
	if seconds < 0 {
		return 0, fmt.Errorf("%w: ttl_seconds must not be negative", errInvalidRequest)
	}
	return time.Duration(seconds) * time.Second, nil
}

// SignX509SVID implements the CSR API.
func (s *Server) SignX509SVID(ctx context.Context, req *identitypb.SignX509SVIDRequest) (*identitypb.SignX509SVIDResponse, error) {
	ttl, err := requestedTTL(req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	id, err := s.authenticate(ctx, true)
	if err != nil {
		s.log.Warn("CSR refused", "reason", err)
		return nil, err
	}
	chain, err := s.cfg.CA.SignX509SVID(req.GetCsr(), id, ttl)
	if err != nil {
		s.log.Warn("CSR refused", "spiffeID", id.String(), "reason", err)
		return nil, err
	}
	s.log.Debug("X.509-SVID issued", "spiffeID", id.String(), "serial", chain[0].SerialNumber.String(), "notAfter", chain[0].NotAfter)
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	bundles, err := s.bundles()
	if err != nil {
		return nil, err
	}
	return &identitypb.SignX509SVIDResponse{SpiffeId: id.String(), CertChain: der, Bundles: bundles}, nil
}

// MintJWTSVID implements the CSR API.
func (s *Server) MintJWTSVID(ctx context.Context, req *identitypb.MintJWTSVIDRequest) (*identitypb.MintJWTSVIDResponse, error) {
	ttl, err := requestedTTL(req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 {
		return nil, fmt.Errorf("%w: at least one audience is required", errInvalidRequest)
	}
	id, err := s.authenticate(ctx, false)
	if err != nil {
		return nil, err
	}
	token, exp, err := s.cfg.CA.MintJWTSVID(id, req.GetAudience(), ttl)
	if err != nil {
		return nil, err
	}
	return &identitypb.MintJWTSVIDResponse{SpiffeId: id.String(), Token: token, ExpiresAtUnix: exp.Unix()}, nil
}

// WatchBundles implements the CSR API.
func (s *Server) WatchBundles(_ *identitypb.WatchBundlesRequest, stream grpc.ServerStreamingServer[identitypb.Bundles]) error {
	ctx := stream.Context()
	if _, err := s.authenticate(ctx, false); err != nil {
		return err
	}
	for {
		changed := s.cfg.CA.Changed() // before reading, so no change is missed
		bundles, err := s.bundles()
		if err != nil {
			return err
		}
		if err := stream.Send(bundles); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// bundles returns the CA's own bundle and the federated ones in SPIFFE format,
// marshalled once per generation. The result is shared: callers must not modify it.
func (s *Server) bundles() (*identitypb.Bundles, error) {
	generation := s.cfg.CA.Changed()
	if c := s.bundleCache.Load(); c != nil && c.generation == generation {
		return c.bundles, nil
	}
	all := append([]*spiffebundle.Bundle{s.cfg.CA.Bundle()}, s.cfg.CA.FederatedBundles()...)
	out := &identitypb.Bundles{Bundles: make([]*identitypb.Bundle, 0, len(all))}
	for _, b := range all {
		data, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("marshal bundle of %s: %w", b.TrustDomain(), err)
		}
		out.Bundles = append(out.Bundles, &identitypb.Bundle{TrustDomain: b.TrustDomain().Name(), SpiffeBundle: data})
	}
	s.bundleCache.Store(&cachedBundles{generation: generation, bundles: out})
	return out, nil
}
