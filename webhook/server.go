package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Paths of the webhooks, as the webhook configurations name them.
const (
	InjectPath   = "/inject"
	ValidatePath = "/validate"
	HealthzPath  = "/healthz"
)

// DefaultAddress is the webhook server's default address: palisaded's webhook port.
const DefaultAddress = ":15017"

// ServerConfig configures a Server.
type ServerConfig struct {
	// Address to listen on; "" means DefaultAddress.
	Address string
	// GetCertificate returns the serving certificate, which the caBundle of the
	// webhook configurations must verify (palisaded's CA signs it). Required.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Injector is served at InjectPath and Validator at ValidatePath; a nil one is
	// not served.
	Injector  http.Handler
	Validator http.Handler
	Logger    *slog.Logger
}

// Server serves the admission webhooks over TLS to the API server, and HealthzPath.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
}

// Timeouts of the webhook server. The API server gives up on a webhook after its
// timeoutSeconds, at most 30 s; nothing takes longer to answer.
const (
	readHeaderTimeout = 10 * time.Second
	requestTimeout    = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 5 * time.Second
)

// NewServer checks the configuration.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.GetCertificate == nil {
		return nil, errors.New("webhook server: GetCertificate is required")
	}
	if cfg.Address == "" {
		cfg.Address = DefaultAddress
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Listen binds the server's address.
func (s *Server) Listen() (net.Listener, error) {
	l, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("webhook server: %w", err)
	}
	return l, nil
}

// Serve serves on l until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	if s.cfg.Injector != nil {
		mux.Handle(InjectPath, s.cfg.Injector)
	}
	if s.cfg.Validator != nil {
		mux.Handle(ValidatePath, s.cfg.Validator)
	}
	mux.HandleFunc("GET "+HealthzPath, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: s.cfg.GetCertificate,
		},
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       requestTimeout,
		WriteTimeout:      requestTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		// Failed handshakes (a caBundle that does not verify the certificate shows
		// as "bad certificate" here) and other connection errors.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	// The shutdown goroutine also ends when ServeTLS fails on its own.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			s.log.Warn("webhook server shutdown", "error", err)
		}
	}()
	s.log.Info("admission webhooks serving", "address", l.Addr().String())
	// ServeTLS (not Serve on a TLS listener) also sets up HTTP/2.
	err := srv.ServeTLS(l, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return fmt.Errorf("webhook server: %w", err)
}
