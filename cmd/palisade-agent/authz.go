package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/cmd/internal/cli"
	"github.com/palisade-mesh/palisade/rego"
)

// authzOptions are the agent's local ext_authz flags.
type authzOptions struct {
	bundleURL   string
	bundleKey   string
	address     string
	decisionLog string
}

// localAuthz is the ext_authz endpoint beside the workload, deciding by the policy
// bundle palisaded serves.
type localAuthz struct {
	server   *authz.Server
	client   *rego.BundleClient
	lis      net.Listener
	closeLog func(context.Context) error
	log      *slog.Logger
}

// newLocalAuthz prepares the endpoint; until the first bundle arrives it denies
// every request (no policy: fail closed).
func newLocalAuthz(o authzOptions, log *slog.Logger, reg prometheus.Registerer) (*localAuthz, error) {
	keyPEM, err := os.ReadFile(o.bundleKey)
	if err != nil {
		return nil, fmt.Errorf("--policy-bundle-key: %w", err)
	}
	verifier, err := rego.NewBundleVerifier(map[string][]byte{"palisade": keyPEM})
	if err != nil {
		return nil, fmt.Errorf("--policy-bundle-key %s: %w", o.bundleKey, err)
	}
	engine := authz.NewEngine()
	l := &localAuthz{log: log}
	l.client, err = rego.NewBundleClient(rego.BundleClientConfig{
		URL:             o.bundleURL,
		Verifier:        verifier,
		LongPollTimeout: 30 * time.Second,
		Logger:          log,
		OnBundle: func(b rego.BundleSnapshot) error {
			err := engine.Update(context.Background(), rego.Policy{Modules: b.Modules, Data: b.Data, Revision: b.Revision})
			if err == nil {
				log.Info("policy in force", "revision", b.Revision)
			}
			return err
		},
	})
	if err != nil {
		return nil, err
	}
	var dlog *authz.DecisionLog
	if o.decisionLog != "" {
		if dlog, l.closeLog, err = authz.OpenDecisionLog(o.decisionLog, cli.DecisionLogConfig("palisade-agent")); err != nil {
			return nil, fmt.Errorf("--decision-log: %w", err)
		}
	}
	l.server = authz.NewServer(authz.Config{Policies: engine, DecisionLog: dlog, Metrics: reg, Logger: log})
	if l.lis, err = net.Listen("tcp", o.address); err != nil {
		return nil, fmt.Errorf("ext_authz: listening on %s: %w", o.address, err)
	}
	return l, nil
}

// run fetches bundles and serves decisions until ctx ends.
func (l *localAuthz) run(ctx context.Context) error {
	go l.client.Run(ctx)
	err := l.server.Serve(ctx, l.lis)
	if l.closeLog != nil {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if cerr := l.closeLog(shutdown); cerr != nil {
			l.log.Error("writing the decision log", "error", cerr)
		}
	}
	return err
}
