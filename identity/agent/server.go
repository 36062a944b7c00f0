package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// JWTSource mints JWT-SVIDs for an identity (the real one asks the CA; the
// agent caches them).
type JWTSource interface {
	FetchJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (*jwtsvid.SVID, error)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	SocketPath string
	// SocketMode is the socket file's mode; default 0600 (only the agent's
	// user). Use e.g. 0660 with SocketGroup to let a group connect.
	SocketMode os.FileMode
	// SocketGroup is the gid the socket is chowned to; 0 or -1 leave it as
	// created (group 0 is what a root agent's socket has anyway).
	SocketGroup int
	Store       *Store
	// JWT serves FetchJWTSVID; nil disables it (Unimplemented).
	JWT      JWTSource
	Attestor Attestor
	Logger   *slog.Logger // never given keys or tokens
	// Registerer, if set, gets the server's metrics.
	Registerer prometheus.Registerer
}

// Server serves the SPIFFE Workload API and Envoy SDS on one Unix socket.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	store *Store
	m     *metrics
	grpc  *grpc.Server
	sds   *sdsServer

	// stopping is closed when Serve's context ends: watch streams return
	// Unavailable then, so that GracefulStop does not wait on them forever
	// and clients reconnect to the next agent.
	stopping chan struct{}
	served   atomic.Bool

	// noViewCache turns the per-generation response memo off (benchmarks).
	noViewCache bool
}

// gracePeriod bounds how long Serve waits for in-flight requests on exit.
const gracePeriod = 5 * time.Second

// NewServer checks cfg and builds the server; Serve starts it.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.SocketPath == "":
		return nil, errors.New("agent: SocketPath is required")
	case cfg.Store == nil:
		return nil, errors.New("agent: Store is required")
	case cfg.Attestor == nil:
		return nil, errors.New("agent: Attestor is required")
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o600
	}
	if cfg.SocketMode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("agent: SocketMode %v has bits beyond permissions", cfg.SocketMode)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		store:    cfg.Store,
		m:        m,
		stopping: make(chan struct{}),
	}
	s.sds = newSDSServer(s)
	s.grpc = grpc.NewServer(
		grpc.Creds(PeerCredentials()),
		// Reuse goroutines (and their grown stacks) across streams: a fetch is
		// short work, where starting a goroutine per stream is measurable.
		grpc.NumStreamWorkers(uint32(runtime.NumCPU())),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	)
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, &workloadAPI{s: s})
	secretservice.RegisterSecretDiscoveryServiceServer(s.grpc, s.sds)
	// The Workload Endpoint spec asks for reflection so clients can discover
	// services beyond the Workload API (here: SDS).
	reflection.Register(s.grpc)
	return s, nil
}

// Serve listens on the Unix socket and serves both services until ctx ends,
// then stops gracefully and removes the socket. It may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if s.served.Swap(true) {
		return errors.New("agent: Serve called twice")
	}
	lis, info, err := listenUnix(s.cfg.SocketPath, s.cfg.SocketMode, s.cfg.SocketGroup)
	if err != nil {
		return err
	}
	defer removeSocket(s.cfg.SocketPath, info)

	// Our own cancel also ends the SDS streams when grpc.Serve fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.sds.start(ctx)
	sdsDone := make(chan struct{})
	go func() {
		defer close(sdsDone)
		s.sds.run(ctx)
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- s.grpc.Serve(lis) }()
	s.log.Info("agent socket serving", "path", s.cfg.SocketPath, "mode", s.cfg.SocketMode.String())

	var result error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		result = fmt.Errorf("agent: serving %s: %w", s.cfg.SocketPath, err)
	}
	cancel()
	close(s.stopping)
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(gracePeriod):
		s.log.Warn("agent socket: graceful stop timed out, closing connections")
		s.grpc.Stop()
		<-stopped
	}
	<-sdsDone
	return result
}

// listenUnix binds the socket in a fresh 0700 directory beside path, sets mode
// and group there and renames it into place, so no one can connect while the
// socket still has the umask's default mode.
func listenUnix(path string, mode os.FileMode, gid int) (*net.UnixListener, os.FileInfo, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, nil, err
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".agent-sock-")
	if err != nil {
		return nil, nil, fmt.Errorf("agent: socket directory: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	bindPath := filepath.Join(tmpDir, "s")
	if len(bindPath) >= 108 { // sun_path limit; bind directly, accepting a short window
		bindPath = path
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindPath, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: listen on %s: %w", path, err)
	}
	// The socket's final path is removed by Serve, and only if it is still ours.
	lis.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, os.FileInfo, error) {
		lis.Close()
		os.Remove(bindPath)
		return nil, nil, err
	}
	if err := os.Chmod(bindPath, mode); err != nil {
		return fail(fmt.Errorf("agent: chmod socket: %w", err))
	}
	if gid > 0 {
		if err := os.Chown(bindPath, -1, gid); err != nil {
			return fail(fmt.Errorf("agent: chown socket to group %d: %w", gid, err))
		}
	}
	if bindPath != path {
		if err := os.Rename(bindPath, path); err != nil {
			return fail(fmt.Errorf("agent: move socket into place: %w", err))
		}
	}
	info, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return lis, info, nil
}

// removeStaleSocket removes a socket file left by a previous agent. It refuses
// to remove anything that is not a socket, or a socket someone still serves.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: socket path: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("agent: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("agent: %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("agent: remove stale socket: %w", err)
	}
	return nil
}

func removeSocket(path string, ours os.FileInfo) {
	if fi, err := os.Lstat(path); err == nil && os.SameFile(fi, ours) {
		os.Remove(path)
	}
}

// identities attests the caller of ctx: PermissionDenied when it gets none.
func (s *Server) identities(ctx context.Context) (Caller, []spiffeid.ID, error) {
	c, ok := CallerFromContext(ctx)
	if !ok {
		return c, nil, status.Error(codes.Unauthenticated, "caller credentials unavailable")
	}
	ids, err := s.cfg.Attestor.Identities(c)
	if err != nil {
		s.log.Warn("attestation failed", "caller", c.String(), "error", err)
		return c, nil, status.Error(codes.Unavailable, "attestation failed")
	}
	if len(ids) == 0 {
		return c, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return c, ids, nil
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	s.done(ctx, info.FullMethod, err, start)
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	method := shortMethod(info.FullMethod)
	g := s.m.streams.WithLabelValues(method)
	g.Inc()
	defer g.Dec()
	start := time.Now()
	err := h(srv, ss)
	s.done(ss.Context(), info.FullMethod, err, start)
	return err
}

// done counts and logs a finished request. Denials are logged at Info because
// they are what an operator debugging attestation rules looks for.
func (s *Server) done(ctx context.Context, fullMethod string, err error, start time.Time) {
	method := shortMethod(fullMethod)
	code := status.Code(err)
	s.m.requests.WithLabelValues(method, code.String()).Inc()
	c, _ := CallerFromContext(ctx)
	level := slog.LevelDebug
	if code == codes.PermissionDenied || code == codes.InvalidArgument || code == codes.Internal {
		level = slog.LevelInfo
	}
	if s.log.Enabled(ctx, level) {
		attrs := []any{"method", method, "code", code.String(), "caller", c.String(), "duration", time.Since(start)}
		if err != nil {
			attrs = append(attrs, "error", status.Convert(err).Message())
		}
		s.log.Log(ctx, level, "agent request", attrs...)
	}
}

func shortMethod(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

type metrics struct {
	requests *prometheus.CounterVec
	streams  *prometheus.GaugeVec
	updates  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_agent_workload_api_requests_total",
			Help: "Requests on the agent socket (Workload API and SDS) by method and gRPC code; streams count when they end.",
		}, []string{"method", "code"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "palisade_agent_workload_api_streams",
			Help: "Open streams on the agent socket by method.",
		}, []string{"method"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_agent_workload_api_stream_updates_total",
			Help: "Responses sent on streams (the first and every update) by method.",
		}, []string{"method"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.requests, err = register(reg, m.requests)
	if err != nil {
		return nil, err
	}
	m.streams, err = register(reg, m.streams)
	if err != nil {
		return nil, err
	}
	m.updates, err = register(reg, m.updates)
	return m, err
}

// register tolerates a second server on the same registry by sharing the
// collector registered first.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("agent: register metrics: %w", err)
	}
	return c, nil
}
