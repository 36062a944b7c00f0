// Command palisade-agent runs beside workloads: it obtains their SPIFFE identities
// from palisaded's CA, keeps them renewed, and serves them over a Unix socket (the
// SPIFFE Workload API for applications, SDS for Envoy) and, if asked, as files.
//
//	palisaded CA ←(token, then mTLS)← caclient.Keeper → agent.Store → Workload API + SDS + files
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
	"github.com/palisade-mesh/palisade/cmd/internal/cli"
	"github.com/palisade-mesh/palisade/cmd/internal/defaults"
	"github.com/palisade-mesh/palisade/identity/agent"
	"github.com/palisade-mesh/palisade/identity/caclient"
	"github.com/palisade-mesh/palisade/identity/wellknown"
)

type options struct {
	caAddress         string
	trustDomain       string
	caBundle          string
	spiffeID          string
	tokenFile         string
	workloadsFile     string
	socket            string
	socketMode        string
	socketGroup       int
	certDir           string
	svidTTL           time.Duration
	monitoringAddress string
	authz             authzOptions
	envoyBootstrap    string
	xdsAddress        string
	podLabelsFile     string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "capture" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := runCapture(ctx, os.Args[2:], net.InterfaceAddrs, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	var o options
	fs := agentFlags(&o)
	var common cli.Common
	common.Register(fs)
	log := common.Parse(fs, "palisade-agent", os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("palisade-agent stopped", "error", err)
		os.Exit(1)
	}
}

// agentFlags is the agent's flag set, writing into o. The injection template
// (webhook/templates/sidecar.yaml) passes these flags; a test holds them to it.
func agentFlags(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("palisade-agent", flag.ContinueOnError)
	fs.StringVar(&o.caAddress, "ca-address", "127.0.0.1:15012", "palisaded's CA API")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "the mesh's SPIFFE trust domain")
	fs.StringVar(&o.caBundle, "ca-bundle", defaults.RootCert(defaults.DataDir()), "PEM roots to trust palisaded's CA API with before the first bundle arrives (palisaded writes them to DATA_DIR/root-cert.pem)")
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "the identity this agent serves (one agent per pod): spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the bootstrap token for --spiffe-id (from 'palisadectl identity token create'); the PALISADE_TOKEN environment variable also works")
	fs.StringVar(&o.workloadsFile, "workloads", "", "serve several workloads instead (a VM or a node): YAML file mapping Unix users and groups to identities and their tokens; excludes --spiffe-id")
	fs.StringVar(&o.socket, "socket", wellknown.Socket, "Unix socket of the Workload API and SDS")
	fs.StringVar(&o.socketMode, "socket-mode", "0600", "permissions of the socket (octal); with --socket-group, e.g. 0660")
	fs.IntVar(&o.socketGroup, "socket-group", -1, "group ID to own the socket (-1: unchanged)")
	fs.StringVar(&o.certDir, "cert-dir", "", "also write cert-chain.pem, key.pem and root-cert.pem into this directory, replaced atomically on renewal (for proxyless gRPC's file_watcher and apps that read files)")
	fs.DurationVar(&o.svidTTL, "svid-ttl", 0, "X.509-SVID lifetime to ask for (0: the CA's default); the agent renews at half of it")
	fs.StringVar(&o.authz.bundleURL, "policy-bundle-url", "", "run the local ext_authz endpoint, deciding by the policy bundle at this URL (palisaded's --policy-bundle-address, e.g. http://palisaded:15016/bundles/palisade); empty: no local ext_authz")
	fs.StringVar(&o.authz.bundleKey, "policy-bundle-key", "", "PEM public key the policy bundles must be signed with (palisaded writes it to DATA_DIR/policy/bundle-signing-key.pub.pem); required with --policy-bundle-url")
	fs.StringVar(&o.authz.address, "authz-address", "127.0.0.1:9191", "address of the local ext_authz gRPC endpoint (with --policy-bundle-url)")
	fs.StringVar(&o.authz.decisionLog, "decision-log", "", "write every local ext_authz decision as a JSON line in OPA's decision log format to this file (\"-\": standard output); secrets are masked (default: off)")
	fs.StringVar(&o.monitoringAddress, "monitoring-address", "127.0.0.1:15020", "address for /metrics, /healthz/ready (ready once every identity has an SVID) and /debug/pprof/; empty disables it")
	fs.StringVar(&o.envoyBootstrap, "envoy-bootstrap", "", "write the bootstrap of the workload's Envoy sidecar (YAML, for envoy -c) to this file before serving: xDS from --xds-address, certificates over SDS from --socket, node metadata from --spiffe-id, --pod-labels-file and the pod's IPs (INSTANCE_IP or POD_IP, else its interfaces); needs --spiffe-id")
	fs.StringVar(&o.xdsAddress, "xds-address", "127.0.0.1:15010", "palisaded's xDS address, for --envoy-bootstrap (in Kubernetes: palisaded.palisade-system.svc:15010)")
	fs.StringVar(&o.podLabelsFile, "pod-labels-file", "", "the pod's labels, for --envoy-bootstrap: a Kubernetes downward API file of metadata.labels (key=\"value\" lines), e.g. /etc/palisade/podinfo/labels")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: palisade-agent --spiffe-id ID --token-file FILE [flags]\n   or: palisade-agent --workloads FILE [flags]\n   or: palisade-agent capture [flags]   (see palisade-agent capture -h)\n\nObtains SPIFFE identities from palisaded and serves them to workloads over a\nUnix socket: the SPIFFE Workload API and Envoy SDS. With --envoy-bootstrap,\nfirst writes the bootstrap of the workload's Envoy sidecar. With\n--policy-bundle-url, also decides the workload's requests on a local ext_authz\nendpoint by the policy bundles palisaded serves.\n\n'capture' installs a pod's traffic capture (iptables rules that redirect its\nTCP traffic to Envoy) and exits: the init container of an injected pod.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	mode, err := strconv.ParseUint(o.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return fmt.Errorf("--socket-mode %q: an octal mode such as 0600", o.socketMode)
	}
	roots, err := readRoots(td, o.caBundle)
	if err != nil {
		return err
	}
	workloads, err := o.workloads(td)
	if err != nil {
		return err
	}
	if o.envoyBootstrap != "" {
		if o.workloadsFile != "" {
			return errors.New("--envoy-bootstrap needs --spiffe-id: a sidecar serves one workload")
		}
		if err := writeEnvoyBootstrap(o, workloads[0].id, systemPodEnv); err != nil {
			return err
		}
		log.Info("Envoy bootstrap written", "path", o.envoyBootstrap, "xds_address", o.xdsAddress)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	store := agent.NewStore()
	a := &identities{store: store, clients: map[spiffeid.ID]*caclient.Client{}}
	var keepers []*caclient.Keeper
	var rules []agent.UnixRule
	for _, w := range workloads {
		client, err := caclient.New(caclient.Config{Address: o.caAddress, TrustDomain: td, Roots: roots})
		if err != nil {
			return err
		}
		defer client.Close()
		a.clients[w.id] = client
		rules = append(rules, w.rule)
		keepers = append(keepers, caclient.NewKeeper(caclient.KeeperConfig{
			Client:    client,
			ID:        w.id,
			Token:     w.token,
			TTL:       o.svidTTL,
			OnSVID:    a.svidHandler(w.certDir, log),
			OnBundles: a.bundlesHandler(log),
			Logger:    log,
		}))
	}
	attestor := agent.Attestor(agent.ByUnixUser(rules))
	if o.workloadsFile == "" {
		attestor = agent.AllowAll(workloads[0].id)
	}
	srv, err := agent.NewServer(agent.ServerConfig{
		SocketPath:  o.socket,
		SocketMode:  os.FileMode(mode),
		SocketGroup: o.socketGroup,
		Store:       store,
		JWT:         &caclient.JWTCache{Client: a.client},
		Attestor:    attestor,
		Logger:      log,
		Registerer:  reg,
	})
	if err != nil {
		return err
	}
	var local *localAuthz
	if o.authz.bundleURL != "" {
		if o.authz.bundleKey == "" {
			return fmt.Errorf("--policy-bundle-key is required with --policy-bundle-url")
		}
		if local, err = newLocalAuthz(o.authz, log, reg); err != nil {
			return err
		}
	}
	log.Info("palisade-agent starting", "version", buildinfo.String(), "socket", o.socket, "ca_address", o.caAddress, "identities", len(workloads))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, k := range keepers {
		wg.Go(func() { _ = k.Run(ctx) })
	}
	if local != nil {
		wg.Go(func() {
			if err := local.run(ctx); err != nil {
				log.Error("local ext_authz stopped", "error", err)
			}
		})
	}
	if o.monitoringAddress != "" {
		stopMonitoring, err := serveMonitoring(o.monitoringAddress, reg, func() bool { return a.ready(workloads) }, log)
		if err != nil {
			return err
		}
		defer stopMonitoring()
	}
	err = srv.Serve(ctx)
	cancel()
	wg.Wait()
	return err
}

// identities ties the keepers to the store and files the agent serves from.
type identities struct {
	store   *agent.Store
	clients map[spiffeid.ID]*caclient.Client

	mu      sync.Mutex
	bundles *spiffebundle.Set
	dirs    map[string]*x509svid.SVID // cert dir → SVID written there
}

func (a *identities) client(id spiffeid.ID) (*caclient.Client, *x509svid.SVID) {
	return a.clients[id], a.store.SVID(id)
}

func (a *identities) ready(ws []workload) bool {
	for _, w := range ws {
		if a.store.SVID(w.id) == nil {
			return false
		}
	}
	return true
}

func (a *identities) svidHandler(certDir string, log *slog.Logger) func(*x509svid.SVID) {
	return func(svid *x509svid.SVID) {
		a.store.SetSVID(svid)
		if certDir == "" {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.dirs == nil {
			a.dirs = map[string]*x509svid.SVID{}
		}
		a.dirs[certDir] = svid
		if err := agent.WriteFiles(certDir, svid, a.bundles); err != nil {
			log.Error("writing certificate files", "dir", certDir, "err", err)
		}
	}
}

// bundlesHandler publishes new bundles and rewrites the files that carry them.
func (a *identities) bundlesHandler(log *slog.Logger) func(*spiffebundle.Set) {
	return func(set *spiffebundle.Set) {
		a.store.SetBundles(set)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.bundles = set
		for dir, svid := range a.dirs {
			if err := agent.WriteFiles(dir, svid, set); err != nil {
				log.Error("writing certificate files", "dir", dir, "err", err)
			}
		}
	}
}

func readRoots(td spiffeid.TrustDomain, path string) ([]*x509.Certificate, error) {
	b, err := x509bundle.Load(td, path)
	if err != nil {
		return nil, fmt.Errorf("--ca-bundle: %w", err)
	}
	if b.Empty() {
		return nil, fmt.Errorf("--ca-bundle %s: no PEM certificates", path)
	}
	return b.X509Authorities(), nil
}

func serveMonitoring(addr string, reg *prometheus.Registry, ready func() bool, log *slog.Logger) (func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("monitoring: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "no SVID yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, buildinfo.String()) })
	// Profiles, on the loopback-only monitoring address by default.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("monitoring", "err", err)
		}
	}()
	return func() { _ = srv.Close() }, nil
}

// tokenReader reads a bootstrap token from a file (or the environment) each time
// it is needed.
func tokenReader(file string) func() (string, error) {
	return func() (string, error) {
		if file == "" {
			if t := os.Getenv("PALISADE_TOKEN"); t != "" {
				return t, nil
			}
			return "", errors.New("no bootstrap token: give --token-file or PALISADE_TOKEN")
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("bootstrap token: %w", err)
		}
		return strings.TrimSpace(string(data)), nil
	}
}
