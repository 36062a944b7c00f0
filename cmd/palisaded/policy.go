package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/cmd/internal/cli"
	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/rego"
)

// policyOptions are palisaded's policy flags.
type policyOptions struct {
	authzAddress  string
	bundleAddress string
	decisionLog   string
}

// PolicyBundleName is the bundle palisaded serves: GET /bundles/palisade.
const PolicyBundleName = "palisade"

// Files in DATA_DIR/policy: the key bundles are signed with, and its public half
// for agents and stock OPAs to verify them.
const (
	bundleSigningKeyFile = "bundle-signing-key.pem"
	bundlePublicKeyFile  = "bundle-signing-key.pub.pem"
	bundleKeyID          = "palisade"
)

// policyService compiles the snapshot's policies, decides requests on the ext_authz
// endpoint and serves the same policy as an OPA bundle.
type policyService struct {
	engine   *rego.Engine
	authz    *authz.Server
	jwks     *authz.JWKSFetcher
	bundles  *rego.BundleServer
	signer   *rego.BundleSigner
	log      *slog.Logger
	closeLog func(context.Context) error // nil without decision log

	authzL   net.Listener
	bundleL  net.Listener
	bundleHS *http.Server

	updateErrors prometheus.Counter
	mu           sync.Mutex // serializes rebuilds
	snap         *mesh.Snapshot
}

func newPolicyService(o policyOptions, dataDir string, log *slog.Logger, reg prometheus.Registerer) (_ *policyService, err error) {
	s := &policyService{
		engine:  authz.NewEngine(),
		bundles: rego.NewBundleServer(),
		log:     log,
		updateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "palisade_policy_update_errors_total",
			Help: "Policy updates that did not compile; the last good policy stayed in force.",
		}),
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	reg.MustRegister(s.updateErrors)
	if s.signer, err = bundleSigner(filepath.Join(dataDir, "policy")); err != nil {
		return nil, err
	}
	s.jwks = authz.NewJWKSFetcher(authz.JWKSFetcherConfig{Logger: log, OnChange: s.rebuild})
	var dlog *authz.DecisionLog
	if o.decisionLog != "" {
		if dlog, s.closeLog, err = authz.OpenDecisionLog(o.decisionLog, cli.DecisionLogConfig("palisaded")); err != nil {
			return nil, fmt.Errorf("--decision-log: %w", err)
		}
	}
	s.authz = authz.NewServer(authz.Config{Policies: s.engine, DecisionLog: dlog, Metrics: reg, Logger: log})
	if o.authzAddress != "" {
		if s.authzL, err = net.Listen("tcp", o.authzAddress); err != nil {
			return nil, fmt.Errorf("ext_authz: listening on %s: %w", o.authzAddress, err)
		}
	}
	if o.bundleAddress != "" {
		if s.bundleL, err = net.Listen("tcp", o.bundleAddress); err != nil {
			return nil, fmt.Errorf("policy bundles: listening on %s: %w", o.bundleAddress, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/bundles/", s.bundles)
		mux.HandleFunc("GET /bundles-signing-key.pem", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/x-pem-file")
			w.Write(s.signer.PublicKeyPEM())
		})
		s.bundleHS = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return s, nil
}

// bundleSigningKey loads the key bundles are signed with from dir, making it on
// first start, and writes its public half beside it.
func bundleSigner(dir string) (*rego.BundleSigner, error) {
	keyPath := filepath.Join(dir, bundleSigningKeyFile)
	keyPEM, err := os.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("policy bundle signing key: %w", err)
	}
	signer, err := rego.NewBundleSigner(bundleKeyID, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("policy bundle signing key %s: %w", keyPath, err)
	}
	if err := os.WriteFile(filepath.Join(dir, bundlePublicKeyFile), signer.PublicKeyPEM(), 0o644); err != nil {
		return nil, err
	}
	return signer, nil
}

// publish takes a new snapshot.
func (s *policyService) publish(snap *mesh.Snapshot) {
	s.mu.Lock()
	s.snap = snap
	s.mu.Unlock()
	s.rebuild()
}

// rebuild compiles the policy of the latest snapshot with the latest JWKS. A policy
// that does not compile is reported and the last good one stays in force.
func (s *policyService) rebuild() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap == nil {
		return
	}
	p, diags := authz.Policy(s.snap, s.jwks)
	for _, d := range diags {
		s.log.Warn("policy object left out", "diagnostic", d.String())
	}
	if cur := s.engine.Current(); cur != nil && cur.Policy.Revision == p.Revision {
		return
	}
	if err := s.engine.Update(context.Background(), p); err != nil {
		s.updateErrors.Inc()
		s.log.Error("policy does not compile; the last good policy stays in force", "error", err)
		return
	}
	tarball, revision, err := rego.BuildBundle(rego.BundleContents{Roots: []string{"palisade"}, Modules: p.Modules, Data: p.Data}, s.signer)
	if err != nil {
		s.log.Error("building the policy bundle", "error", err)
		return
	}
	if err := s.bundles.Set(PolicyBundleName, tarball, revision); err != nil {
		s.log.Error("serving the policy bundle", "error", err)
		return
	}
	s.log.Info("policy in force", "revision", p.Revision, "bundle_revision", revision)
}

// close releases what newPolicyService opened, when palisaded stops before running.
func (s *policyService) close() {
	for _, l := range []net.Listener{s.authzL, s.bundleL} {
		if l != nil {
			l.Close()
		}
	}
	s.flushLog()
}

// flushLog writes out the decision log; the ext_authz server has stopped.
func (s *policyService) flushLog() {
	if s.closeLog != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.closeLog(ctx); err != nil {
			s.log.Error("writing the decision log", "error", err)
		}
	}
}

func (s *policyService) runners() []func(context.Context) error {
	rs := []func(context.Context) error{s.jwks.Run}
	if s.authzL != nil {
		rs = append(rs, func(ctx context.Context) error {
			err := s.authz.Serve(ctx, s.authzL)
			s.flushLog()
			return err
		})
	}
	if s.bundleHS != nil {
		rs = append(rs, func(ctx context.Context) error {
			go func() {
				<-ctx.Done()
				s.bundles.Close()
				shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s.bundleHS.Shutdown(shutdown)
			}()
			if err := s.bundleHS.Serve(s.bundleL); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	return rs
}
