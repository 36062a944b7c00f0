// Package backend is a tiny gRPC backend for Palisade's demo and end-to-end tests.
//
// It serves grpc.testing.TestService (from google.golang.org/grpc/interop/grpc_testing,
// so no protoc step is needed). UnaryCall answers with the backend's version in
// SimpleResponse.server_id and its listen address in SimpleResponse.hostname, which lets
// a client tell which version of a service answered a call.
//
// Two kinds of backend exist:
//   - Start runs a plain gRPC server: the proxyless client finds it through xDS
//     (a WorkloadEntry in palisaded's config names its address), but the server itself
//     knows nothing about xDS.
//   - StartXDS runs an xDS-enabled server (google.golang.org/grpc/xds.NewGRPCServer):
//     it asks palisaded for its listener and serves only once it has one. Its serving
//     mode changes are reported, so that a test can wait until palisaded configured it.
//
// Client helpers (Dial, Call) for proxyless xDS clients live in client.go.
package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
)

// Config describes a backend.
type Config struct {
	// Address is the TCP address to listen on, e.g. "127.0.0.1:9083". Use
	// "127.0.0.1:0" for a free port (read it back with Backend.Addr). Ignored when
	// Listener is set.
	Address string
	// Listener, when set, is served instead of listening on Address.
	Listener net.Listener
	// Version is what the backend answers in SimpleResponse.server_id, e.g. "v1".
	Version string
}

// XDSConfig describes an xDS-enabled backend.
type XDSConfig struct {
	Config
	// Bootstrap is the gRPC xDS bootstrap JSON of this server (see
	// xds.GRPCBootstrap). It is passed in-process, so several servers with different
	// node identities can run in one process. If empty, grpc-go reads the bootstrap
	// named by GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG.
	Bootstrap []byte
	// OnModeChange, if set, is called on every serving mode change. It must not
	// block.
	OnModeChange func(mode connectivity.ServingMode, err error)
}

// Backend is a running backend.
type Backend struct {
	version string
	lis     net.Listener
	stop    func()
	done    chan struct{}
	serveMu sync.Mutex
	serveEr error

	// Serving mode of an xDS backend; always serving for a plain one.
	mu       sync.Mutex
	mode     connectivity.ServingMode
	modeErr  error
	modeChgd chan struct{} // closed and replaced on every mode change
}

// Start listens and serves a plain (non-xDS) TestService backend until ctx is done or
// Stop is called.
func Start(ctx context.Context, cfg Config) (*Backend, error) {
	lis, err := listen(cfg)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	b := newBackend(cfg.Version, lis, srv.Stop)
	b.mode = connectivity.ServingModeServing
	testpb.RegisterTestServiceServer(srv, &service{version: cfg.Version, addr: lis.Addr().String()})
	b.serve(ctx, func() error { return srv.Serve(lis) })
	return b, nil
}

// StartXDS listens and serves an xDS-enabled TestService backend until ctx is done or
// Stop is called. The server accepts connections only once palisaded has sent its
// listener (grpc/server?xds.resource.listening_address=IP:PORT); WaitServing waits
// for that. Security comes from xDS, with plaintext as the fallback.
func StartXDS(ctx context.Context, cfg XDSConfig) (*Backend, error) {
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return nil, fmt.Errorf("xds server credentials: %w", err)
	}
	lis, err := listen(cfg.Config)
	if err != nil {
		return nil, err
	}
	b := newBackend(cfg.Version, lis, nil)
	b.mode = connectivity.ServingModeStarting
	opts := []grpc.ServerOption{
		grpc.Creds(creds),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			b.setMode(args.Mode, args.Err)
			if cfg.OnModeChange != nil {
				cfg.OnModeChange(args.Mode, args.Err)
			}
		}),
	}
	if len(cfg.Bootstrap) > 0 {
		opts = append(opts, xds.BootstrapContentsForTesting(cfg.Bootstrap))
	}
	srv, err := xds.NewGRPCServer(opts...)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("xds server: %w", err)
	}
	b.stop = srv.Stop
	testpb.RegisterTestServiceServer(srv, &service{version: cfg.Version, addr: lis.Addr().String()})
	b.serve(ctx, func() error { return srv.Serve(lis) })
	return b, nil
}

func listen(cfg Config) (net.Listener, error) {
	if cfg.Listener != nil {
		return cfg.Listener, nil
	}
	addr := cfg.Address
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", cfg.Version, err)
	}
	return lis, nil
}

func newBackend(version string, lis net.Listener, stop func()) *Backend {
	return &Backend{version: version, lis: lis, stop: stop, done: make(chan struct{}), modeChgd: make(chan struct{})}
}

func (b *Backend) serve(ctx context.Context, serve func() error) {
	go func() {
		err := serve()
		if errors.Is(err, grpc.ErrServerStopped) {
			err = nil
		}
		b.serveMu.Lock()
		b.serveEr = err
		b.serveMu.Unlock()
		close(b.done)
	}()
	go func() {
		select {
		case <-ctx.Done():
			b.Stop()
		case <-b.done:
		}
	}()
}

// Addr is the address the backend listens on (IP:PORT).
func (b *Backend) Addr() string { return b.lis.Addr().String() }

// Port is the port the backend listens on.
func (b *Backend) Port() int { return b.lis.Addr().(*net.TCPAddr).Port }

// Version is the version the backend answers with.
func (b *Backend) Version() string { return b.version }

// Stop stops the server at once and waits for Serve to return. It returns the error
// Serve failed with, if any. Stop may be called more than once.
func (b *Backend) Stop() error {
	b.stop()
	<-b.done
	b.serveMu.Lock()
	defer b.serveMu.Unlock()
	return b.serveEr
}

// Done is closed when the server has stopped.
func (b *Backend) Done() <-chan struct{} { return b.done }

func (b *Backend) setMode(m connectivity.ServingMode, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mode, b.modeErr = m, err
	close(b.modeChgd)
	b.modeChgd = make(chan struct{})
}

// Mode returns the current serving mode and, when not serving, the reason grpc-go
// gave. A plain backend is always serving.
func (b *Backend) Mode() (connectivity.ServingMode, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mode, b.modeErr
}

// WaitServing waits until the backend is in serving mode. On timeout it returns an
// error naming the last mode and the reason grpc-go reported for it.
func (b *Backend) WaitServing(ctx context.Context) error {
	return b.WaitMode(ctx, connectivity.ServingModeServing)
}

// WaitMode waits until the backend is in the given serving mode.
func (b *Backend) WaitMode(ctx context.Context, want connectivity.ServingMode) error {
	for {
		b.mu.Lock()
		mode, err, ch := b.mode, b.modeErr, b.modeChgd
		b.mu.Unlock()
		if mode == want {
			return nil
		}
		select {
		case <-ch:
		case <-b.done:
			return fmt.Errorf("backend %s (%s) stopped while waiting for mode %v", b.version, b.Addr(), want)
		case <-ctx.Done():
			return fmt.Errorf("backend %s (%s): still %v after waiting for %v (last reason: %v): %w",
				b.version, b.Addr(), mode, want, err, ctx.Err())
		}
	}
}

// Request headers that make UnaryCall misbehave, for timeout and retry tests.
const (
	// DelayHeader makes the call wait this long (a Go duration) before answering.
	DelayHeader = "x-delay"
	// FailHeader makes the first N attempts of a call fail with UNAVAILABLE; the
	// attempts of one call share its CallIDHeader.
	FailHeader   = "x-fail-attempts"
	CallIDHeader = "x-call-id"
)

// PeerHeader, in UnaryCall's response headers, names the client certificate the
// call came with: "URI_SAN SERIAL" (absent over plaintext).
const PeerHeader = "x-peer-certificate"

// service implements grpc.testing.TestService's UnaryCall and EmptyCall.
type service struct {
	testpb.UnimplementedTestServiceServer
	version string
	addr    string

	mu       sync.Mutex
	attempts map[string]int // by call ID
}

func (s *service) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

// UnaryCall answers with the backend's version and listen address, after the delay
// or failures the request's headers ask for.
func (s *service) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(FailHeader); len(v) > 0 {
		n, err := strconv.Atoi(v[0])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s: %v", FailHeader, err)
		}
		id := strings.Join(md.Get(CallIDHeader), ",")
		s.mu.Lock()
		if s.attempts == nil {
			s.attempts = map[string]int{}
		}
		s.attempts[id]++
		attempt := s.attempts[id]
		s.mu.Unlock()
		if attempt <= n {
			return nil, status.Errorf(codes.Unavailable, "attempt %d of call %q fails on purpose", attempt, id)
		}
	}
	if v := md.Get(DelayHeader); len(v) > 0 {
		d, err := time.ParseDuration(v[0])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s: %v", DelayHeader, err)
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			leaf := info.State.PeerCertificates[0]
			var uri string
			if len(leaf.URIs) > 0 {
				uri = leaf.URIs[0].String()
			}
			_ = grpc.SetHeader(ctx, metadata.Pairs(PeerHeader, uri+" "+leaf.SerialNumber.String()))
		}
	}
	return &testpb.SimpleResponse{ServerId: s.version, Hostname: s.addr}, nil
}
