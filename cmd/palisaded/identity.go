package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-mesh/palisade/cmd/internal/defaults"
	"github.com/palisade-mesh/palisade/identity"
	"github.com/palisade-mesh/palisade/identity/caserver"
)

// identityOptions are palisaded's CA flags.
type identityOptions struct {
	trustDomain    string
	dataDir        string
	caCertDir      string
	caAddress      string
	bundleAddress  string
	adminSocket    string
	svidTTL        time.Duration
	maxSVIDTTL     time.Duration
	caTTL          time.Duration
	federatedFiles multiFlag
	dnsNames       multiFlag
	// kube, with --source kubernetes, shares the CA among replicas through a
	// Secret of kubeNamespace and accepts service-account tokens for tokenAudience.
	kube          *kubeClients
	kubeNamespace string
	tokenAudience string
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// identityService is the CA with its three endpoints, ready to run.
type identityService struct {
	ca        *identity.CA
	api       *caserver.Server
	apiL      net.Listener
	bundleL   net.Listener
	admin     *http.Server
	adminL    net.Listener
	rootsPath string
	// rootsWritten is the CA's Changed() from when root-cert.pem was last written.
	rootsWritten <-chan struct{}
	log          *slog.Logger
}

// newIdentityService opens the CA (creating it on first start) and binds its
// endpoints; listeners are closed by run's context ending or by close on error.
func newIdentityService(o identityOptions, log *slog.Logger, reg prometheus.Registerer) (*identityService, error) {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain %q: %w", o.trustDomain, err)
	}
	var federated []*spiffebundle.Bundle
	for _, f := range o.federatedFiles {
		name, path, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("--federate %q: use TRUST_DOMAIN=BUNDLE_FILE", f)
		}
		ftd, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("--federate %q: %w", f, err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--federate %q: %w", f, err)
		}
		b, err := identity.LoadFederatedBundle(ftd, data)
		if err != nil {
			return nil, fmt.Errorf("--federate %q: %w", f, err)
		}
		federated = append(federated, b)
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	openCA := func() (*identity.CA, error) {
		return identity.NewCA(identity.CAConfig{
			TrustDomain:    td,
			DataDir:        o.dataDir,
			PluggedCertDir: o.caCertDir,
			CATTL:          o.caTTL,
			DefaultSVIDTTL: o.svidTTL,
			MaxSVIDTTL:     o.maxSVIDTTL,
			Federated:      federated,
			Logger:         log,
		})
	}
	var ca *identity.CA
	var serviceAccountTokens caserver.TokenRedeemer
	if o.kube != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		ca, err = openSharedCA(ctx, o.kube, o.kubeNamespace, o.dataDir, openCA)
		cancel()
		if err == nil {
			serviceAccountTokens, err = tokenReviewer(o.kube, td, o.tokenAudience)
		}
	} else {
		ca, err = openCA()
	}
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	tokens, err := identity.NewTokens(identity.TokensConfig{Path: filepath.Join(o.dataDir, "tokens.json")})
	if err != nil {
		return nil, fmt.Errorf("bootstrap tokens: %w", err)
	}
	api, err := caserver.New(caserver.Config{Address: o.caAddress, CA: ca, Tokens: tokens, ServiceAccountTokens: serviceAccountTokens, DNSNames: o.dnsNames, Logger: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	s := &identityService{ca: ca, api: api, log: log, rootsPath: defaults.RootCert(o.dataDir),
		admin: &http.Server{Handler: caserver.AdminHandler(td, tokens), ReadHeaderTimeout: 10 * time.Second}}
	if s.apiL, err = api.Listen(); err != nil {
		return nil, err
	}
	if o.bundleAddress != "" {
		if s.bundleL, err = net.Listen("tcp", o.bundleAddress); err != nil {
			s.close()
			return nil, fmt.Errorf("bundle endpoint: %w", err)
		}
	}
	if s.adminL, err = listenUnix(o.adminSocket); err != nil {
		s.close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// Taken before the first write, so that no change is missed in between.
	s.rootsWritten = ca.Changed()
	if err := ca.WriteRoots(s.rootsPath); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// listenUnix binds a Unix socket only its owner can use, replacing a stale one.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The directory is 0700 already; the mode also guards a socket placed elsewhere.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (s *identityService) close() {
	for _, l := range []net.Listener{s.apiL, s.bundleL, s.adminL} {
		if l != nil {
			l.Close()
		}
	}
}

// runners returns the identity components to run until ctx ends.
func (s *identityService) runners() []func(context.Context) error {
	rs := []func(context.Context) error{
		func(ctx context.Context) error { return s.api.Serve(ctx, s.apiL) },
		s.ca.Run,
		func(ctx context.Context) error { // keep root-cert.pem current through CA rotations
			for changed := s.rootsWritten; ; {
				select {
				case <-ctx.Done():
					return nil
				case <-changed:
				}
				changed = s.ca.Changed()
				if err := s.ca.WriteRoots(s.rootsPath); err != nil {
					s.log.Error("root-cert.pem", "err", err)
				}
			}
		},
		func(ctx context.Context) error {
			go func() { <-ctx.Done(); s.admin.Close() }()
			if err := s.admin.Serve(s.adminL); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	if s.bundleL != nil {
		rs = append(rs, func(ctx context.Context) error {
			srv, err := s.api.ServeBundleEndpoint(s.bundleL)
			if err != nil {
				return err
			}
			<-ctx.Done()
			return srv.Close()
		})
	}
	return rs
}
