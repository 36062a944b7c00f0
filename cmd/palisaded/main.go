// Command palisaded is Palisade's control plane: it reads the mesh configuration,
// translates it for every connected proxy and serves it over xDS, and decides
// requests by the mesh's policies.
//
// The pipeline is wired here, in one place:
//
//	config source (YAML directory or Kubernetes) → mesh.Snapshot ┬→ xds translators → xDS server
//	                                               └→ authz.Policy → rego.Engine → ext_authz, OPA bundles
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
	"github.com/palisade-mesh/palisade/cmd/internal/cli"
	"github.com/palisade-mesh/palisade/cmd/internal/defaults"
	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/filesource"
	"github.com/palisade-mesh/palisade/xds"
	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

type options struct {
	source            string
	configDir         string
	xdsAddress        string
	monitoringAddress string
	maxFullPushes     int
	sidecarAuthz      string
	memoryLimit       string
	identity          identityOptions
	policy            policyOptions
	kube              kubeOptions
}

func main() {
	var o options
	fs := flag.NewFlagSet("palisaded", flag.ContinueOnError)
	fs.StringVar(&o.source, "source", "file", "where the mesh configuration comes from: file (the YAML directory --config-dir) or kubernetes (Services, EndpointSlices, Pods and the Istio and Palisade custom resources of the cluster)")
	fs.StringVar(&o.configDir, "config-dir", "/etc/palisade/config", "with --source file: directory of Istio YAML (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RequestAuthentication) and Palisade RegoPolicy objects, watched for changes")
	fs.StringVar(&o.xdsAddress, "xds-address", "127.0.0.1:15010", "address of the xDS (ADS) gRPC server")
	fs.StringVar(&o.monitoringAddress, "monitoring-address", "127.0.0.1:15014", "address of the HTTP server for /metrics, /healthz/ready and /debug/")
	fs.IntVar(&o.maxFullPushes, "max-full-pushes", xdsserver.DefaultMaxFullPushes, "full configuration pushes (first requests, new subscriptions) in flight at once; a push holds its slot until the proxy acknowledges it (negative: no bound)")
	fs.StringVar(&o.sidecarAuthz, "sidecar-authz-address", xds.DefaultExtAuthzAddress, "IP:PORT of the ext_authz endpoint an Envoy sidecar calls (palisade-agent's --authz-address, beside it) for workloads a CUSTOM AuthorizationPolicy or a RegoPolicy selects")
	fs.StringVar(&o.memoryLimit, "memory-limit", "", "soft memory limit for the Go runtime, e.g. 250MiB or 1GiB, or none (as GOMEMLIMIT): the garbage collector works harder near it instead of letting the heap double (default: GOMEMLIMIT if set, else 90% of the container's cgroup memory limit if there is one)")
	id := &o.identity
	fs.StringVar(&id.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh's identities (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)")
	fs.StringVar(&id.dataDir, "data-dir", defaults.DataDir(), "directory for palisaded's state: the CA's keys and certificates (created on first start), bootstrap token hashes, root-cert.pem for agents, the admin socket")
	fs.StringVar(&id.caCertDir, "ca-cert-dir", "", "use an existing CA instead of a self-generated root: a directory in Istio's cacerts layout (ca-cert.pem, ca-key.pem, root-cert.pem, optional cert-chain.pem)")
	fs.StringVar(&id.caAddress, "ca-address", "127.0.0.1:15012", "address of the CA API (gRPC with TLS) from which palisade-agent obtains SVIDs")
	fs.StringVar(&id.bundleAddress, "bundle-endpoint-address", "127.0.0.1:15013", "address of the SPIFFE bundle endpoint (https_spiffe) that federated trust domains fetch this trust domain's bundle from; empty disables it")
	fs.StringVar(&id.adminSocket, "admin-socket", "", "Unix socket (mode 0600) of the admin API used by 'palisadectl identity token create' (default DATA_DIR/admin.sock)")
	fs.DurationVar(&id.svidTTL, "svid-ttl", time.Hour, "lifetime of an X.509-SVID when the agent asks for none")
	fs.DurationVar(&id.maxSVIDTTL, "max-svid-ttl", 24*time.Hour, "longest X.509-SVID lifetime the CA grants")
	fs.DurationVar(&id.caTTL, "ca-ttl", 365*24*time.Hour, "lifetime of a self-generated root; the next root is prepared at half of it and activated at three quarters")
	fs.Var(&id.federatedFiles, "federate", "trust another trust domain: TRUST_DOMAIN=BUNDLE_FILE (SPIFFE bundle JSON or PEM); repeatable")
	fs.Var(&id.dnsNames, "ca-dns-name", "DNS name to put in palisaded's serving certificate, besides its SPIFFE ID; repeatable")
	fs.StringVar(&o.policy.authzAddress, "authz-address", "127.0.0.1:9191", "address of the Envoy ext_authz gRPC server (envoy.service.auth.v3.Authorization) deciding requests by the mesh's policies; empty disables it")
	fs.StringVar(&o.policy.bundleAddress, "policy-bundle-address", "127.0.0.1:15016", "address of the HTTP server of OPA policy bundles (GET /bundles/palisade, signed; public key at /bundles-signing-key.pem) for palisade-agent and stock OPAs; empty disables it")
	fs.StringVar(&o.policy.decisionLog, "decision-log", "", "write every ext_authz decision as a JSON line in OPA's decision log format to this file (\"-\": standard output); secrets in headers are masked (default: off)")
	o.kube.register(fs)
	var common cli.Common
	common.Register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: palisaded [flags]\n\nPalisade's control plane: serves the mesh configuration (the YAML in --config-dir,\nor with --source kubernetes the cluster's Services and Istio resources) to Envoy\nsidecars and proxyless gRPC applications over xDS, issues SPIFFE identities\nto palisade-agent from its CA, and decides requests by the mesh's policies\n(ext_authz) and serves them as OPA bundles.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	log := common.Parse(fs, "palisaded", os.Args[1:])
	if id.adminSocket == "" {
		id.adminSocket = defaults.AdminSocket(id.dataDir)
	}
	limit, from, err := memoryLimit(o.memoryLimit, os.Getenv("GOMEMLIMIT"), "/")
	if err != nil {
		fmt.Fprintln(os.Stderr, "palisaded: --memory-limit:", err)
		os.Exit(2)
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("soft memory limit set", "bytes", limit, "from", from)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("palisaded stopped", "error", err)
		os.Exit(1)
	}
}

// parseBytes reads a size such as 512MiB, 1GiB, 300MB or 1048576.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		factor int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	number, factor := s, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			number, factor = n, u.factor
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(number), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 512MiB or 1GiB", s)
	}
	return n * factor, nil
}

// configSource is what palisaded asks a config source besides running it and
// taking its snapshots.
type configSource interface {
	Diagnostics() []config.Diagnostic
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	var kube *kubeClients
	switch o.source {
	case "file":
		if st, err := os.Stat(o.configDir); err != nil || !st.IsDir() {
			return fmt.Errorf("--config-dir %s is not a readable directory", o.configDir)
		}
	case "kubernetes":
		var err error
		if kube, err = newKubeClients(o.kube.kubeconfig, log); err != nil {
			return err
		}
		o.identity.kube, o.identity.kubeNamespace, o.identity.tokenAudience = kube, o.kube.namespace, o.kube.tokenAudience
		if len(o.kube.webhookDNSNames) == 0 {
			o.kube.webhookDNSNames = multiFlag{o.kube.serviceHost()}
		}
		// The webhooks present palisaded's serving certificate.
		o.identity.dnsNames = append(o.identity.dnsNames, o.kube.webhookDNSNames...)
	default:
		return fmt.Errorf("--source %q: use file or kubernetes", o.source)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	policy, err := newPolicyService(o.policy, o.identity.dataDir, log, reg)
	if err != nil {
		return err
	}
	var snapshot atomic.Pointer[mesh.Snapshot]
	xds := xdsserver.New(xdsserver.Config{Address: o.xdsAddress, Logger: log, Registerer: reg, MaxFullPushes: o.maxFullPushes, TrustDomain: o.identity.trustDomain, ExtAuthzAddress: o.sidecarAuthz})
	var ready atomic.Bool
	publish := func(s *mesh.Snapshot) {
		snapshot.Store(s)
		policy.publish(s)
		xds.SetSnapshot(s)
		ready.Store(true)
	}

	ids, err := newIdentityService(o.identity, log, reg)
	if err != nil {
		policy.close()
		return err
	}
	var source configSource
	var sourceRunners []func(context.Context) error
	if kube != nil {
		k, err := newKubeService(kube, o.kube, ids, o.identity.trustDomain, log, reg, publish)
		if err != nil {
			ids.close()
			policy.close()
			return err
		}
		source, sourceRunners = k.source, k.runners
	} else {
		fileSource := filesource.New(filesource.Config{Dir: o.configDir, Logger: log, Registerer: reg, Publish: publish})
		source, sourceRunners = fileSource, []func(context.Context) error{fileSource.Run}
	}
	xdsListener, err := xds.Listen()
	if err != nil {
		ids.close()
		policy.close()
		return err
	}
	monListener, err := net.Listen("tcp", o.monitoringAddress)
	if err != nil {
		ids.close()
		policy.close()
		xdsListener.Close()
		return fmt.Errorf("monitoring: listening on %s: %w", o.monitoringAddress, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("GET /debug/", xds.DebugHandler())
	// Profiles, on the loopback-only monitoring address by default.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "no configuration loaded yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /debug/diagnostics", func(w http.ResponseWriter, _ *http.Request) {
		// The latest reload's problems, also when they kept the last good objects
		// served and so published nothing new.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, d := range source.Diagnostics() {
			fmt.Fprintln(w, d)
		}
	})
	mux.Handle("POST /debug/authz/explain", authz.ExplainHandler(policy.authz, snapshot.Load, o.identity.trustDomain))
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, buildinfo.String()) })
	monitoring := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	log.Info("palisaded starting", "version", buildinfo.String(), "source", o.source, "config_dir", o.configDir,
		"xds_address", xdsListener.Addr().String(), "monitoring_address", monListener.Addr().String(),
		"authz_address", o.policy.authzAddress, "policy_bundle_address", o.policy.bundleAddress,
		"trust_domain", o.identity.trustDomain, "ca_address", ids.apiL.Addr().String(), "data_dir", o.identity.dataDir)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	runners := append([]func(context.Context) error{
		func(ctx context.Context) error { return xds.Serve(ctx, xdsListener) },
		func(context.Context) error {
			if err := monitoring.Serve(monListener); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}, append(append(ids.runners(), policy.runners()...), sourceRunners...)...)
	errs := make(chan error, len(runners))
	for _, r := range runners {
		go func() { errs <- r(ctx) }()
	}

	// Run until a signal or until one component stops; then stop the others.
	var first error
	remaining := len(runners)
	select {
	case first = <-errs:
		remaining--
	case <-ctx.Done():
	}
	cancel(first)
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = monitoring.Shutdown(shutdown)
	for range remaining {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
