package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/palisade-mesh/palisade/mesh"
)

// Config configures the xDS server.
type Config struct {
	Address    string // host:port to listen on
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil
	// MaxFullPushes bounds the full pushes (first requests, new subscriptions) in
	// flight at once; 0 means DefaultMaxFullPushes, negative means no bound.
	MaxFullPushes int
	// TrustDomain of the mesh's workload identities (spiffe://TRUST_DOMAIN/ns/NS/sa/SA):
	// generated mutual TLS configuration accepts peers of this trust domain. ""
	// means xds.DefaultTrustDomain, cluster.local.
	TrustDomain string
	// ExtAuthzAddress is where sidecars that the policy engine guards reach the
	// ext_authz server (palisade-agent, on their host), as IP:PORT; "" means
	// xds.DefaultExtAuthzAddress, 127.0.0.1:9191.
	ExtAuthzAddress string
}

// DefaultMaxFullPushes bounds reconnect storms; Istio's push throttle defaults to 100.
const DefaultMaxFullPushes = 32

// pushAckTimeout frees a push's slot if the proxy never answers it.
const pushAckTimeout = 10 * time.Second

// Server is the ADS endpoint: it serves the current snapshot to every proxy.
type Server struct {
	cfg     Config
	cache   *Cache
	tracker *Tracker
}

// New returns a server that serves nothing until the first SetSnapshot.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxFullPushes == 0 {
		cfg.MaxFullPushes = DefaultMaxFullPushes
	}
	m := NewMetrics(cfg.Registerer)
	throttle := newPushThrottle(cfg.MaxFullPushes, pushAckTimeout)
	return &Server{
		cfg:     cfg,
		cache:   NewCache(CacheConfig{Logger: cfg.Logger, Metrics: m, Throttle: throttle, TrustDomain: cfg.TrustDomain, ExtAuthzAddress: cfg.ExtAuthzAddress}),
		tracker: NewTracker(cfg.Logger, m, throttle),
	}
}

// SetSnapshot publishes a new snapshot to every connected proxy.
func (s *Server) SetSnapshot(snap *mesh.Snapshot) { s.cache.SetSnapshot(snap) }

// Cache returns the server's cache, for debugging endpoints.
func (s *Server) Cache() *Cache { return s.cache }

// Tracker returns the server's stream tracker, for debugging endpoints.
func (s *Server) Tracker() *Tracker { return s.tracker }

// Listen opens the server's address; Serve then serves on the returned listener.
func (s *Server) Listen() (net.Listener, error) {
	lis, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("xds: listening on %s: %w", s.cfg.Address, err)
	}
	return lis, nil
}

// Serve serves ADS (state of the world and delta) on lis until ctx is done.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	xs := serverv3.NewServer(ctx, s.cache, s.tracker)
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, xs)

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		// Streams never end by themselves; give in-flight sends a moment, then cut.
		t := time.AfterFunc(2*time.Second, gs.Stop)
		gs.GracefulStop()
		t.Stop()
	}()
	s.cfg.Logger.Info("xDS server listening", "address", lis.Addr().String())
	err := gs.Serve(lis)
	<-stopped
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}
