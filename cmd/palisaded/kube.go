package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
	"github.com/palisade-mesh/palisade/identity"
	"github.com/palisade-mesh/palisade/identity/kubeca"
	"github.com/palisade-mesh/palisade/identity/kubetoken"
	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/kubesource"
	"github.com/palisade-mesh/palisade/webhook"
)

// kubeOptions are palisaded's flags for running with Kubernetes as the config source.
type kubeOptions struct {
	kubeconfig        string
	namespace         string
	podName           string
	webhookAddress    string
	webhookDNSNames   multiFlag
	injectionTemplate string
	agentImage        string
	proxyImage        string
	injectCAAddress   string
	injectXDSAddress  string
	tokenAudience     string
	leaderElect       bool
	leaseDuration     time.Duration
}

func (k *kubeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "with --source kubernetes: kubeconfig file of the cluster (default: the in-cluster service account, else $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&k.namespace, "namespace", envOr("POD_NAMESPACE", "palisade-system"), "with --source kubernetes: palisaded's own namespace (its Lease, CA Secret and Service)")
	fs.StringVar(&k.podName, "pod-name", envOr("POD_NAME", hostname()), "with --source kubernetes: this replica's name in leader election")
	fs.StringVar(&k.webhookAddress, "webhook-address", "", "with --source kubernetes: address of the admission webhooks (sidecar injection at /inject, validation at /validate), e.g. :15017; empty disables them")
	fs.Var(&k.webhookDNSNames, "webhook-dns-name", "name the API server reaches the webhooks by, put in the serving certificate (default: palisaded.NAMESPACE.svc); an IP address works too; repeatable")
	fs.StringVar(&k.injectionTemplate, "injection-template", "", "file of the sidecar injection template (Go text/template rendering YAML with initContainers, containers, volumes, annotations; default: the built-in one)")
	fs.StringVar(&k.agentImage, "agent-image", "ghcr.io/palisade-mesh/palisade-agent:"+imageTag(), "image of palisade-agent in injected pods")
	fs.StringVar(&k.proxyImage, "proxy-image", "envoyproxy/envoy:v1.36.2", "image of the Envoy sidecar in injected pods")
	fs.StringVar(&k.injectCAAddress, "injected-ca-address", "", "palisaded's CA API as injected agents reach it (default: palisaded.NAMESPACE.svc:15012)")
	fs.StringVar(&k.injectXDSAddress, "injected-xds-address", "", "palisaded's xDS server as injected proxies reach it (default: palisaded.NAMESPACE.svc:15010)")
	fs.StringVar(&k.tokenAudience, "token-audience", kubetoken.DefaultAudience, "audience the service-account tokens that agents present to the CA must be bound to")
	fs.BoolVar(&k.leaderElect, "leader-elect", true, "with --source kubernetes: elect one replica to write statuses, webhook caBundles and the CA roots ConfigMaps (off: this replica always does)")
	fs.DurationVar(&k.leaseDuration, "leader-lease-duration", 15*time.Second, "how long a vanished leader keeps its lease before another replica takes over")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "palisaded"
	}
	return h
}

// imageTag is the agent image tag matching this build.
func imageTag() string {
	if buildinfo.Version == "dev" {
		return "latest"
	}
	return buildinfo.Version
}

// kubeClients are the clients of the cluster palisaded serves.
type kubeClients struct {
	core       kubernetes.Interface
	dynamic    dynamic.Interface
	extensions apiextensionsclient.Interface
}

func newKubeClients(kubeconfig string, log *slog.Logger) (*kubeClients, error) {
	// client-go logs (leader election, reflector errors) through klog: one log.
	klog.SetSlogLogger(log)
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration (in-cluster, $KUBECONFIG or ~/.kube/config): %w", err)
	}
	// Informers list thousands of objects at start; the defaults (5 qps) would
	// make the first snapshot and the status writes crawl.
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "palisaded/" + buildinfo.Version
	c := &kubeClients{}
	if c.core, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if c.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if c.extensions, err = apiextensionsclient.NewForConfig(cfg); err != nil {
		return nil, err
	}
	return c, nil
}

// openSharedCA opens the CA from the Secret its replicas share (creating both on
// the first start of the first replica).
func openSharedCA(ctx context.Context, k *kubeClients, namespace, dataDir string, open func() (*identity.CA, error)) (*identity.CA, error) {
	return kubeca.Share(ctx, k.core.CoreV1().Secrets(namespace), kubeca.DefaultSecretName, filepath.Join(dataDir, "ca"), open)
}

// tokenReviewer authenticates agents by their projected service-account tokens.
func tokenReviewer(k *kubeClients, td spiffeid.TrustDomain, audience string) (*kubetoken.Reviewer, error) {
	return kubetoken.New(kubetoken.Config{TokenReviews: k.core.AuthenticationV1(), TrustDomain: td, Audience: audience})
}

// kubeService is what palisaded runs for Kubernetes besides the common pipeline.
type kubeService struct {
	source  *kubesource.Source
	runners []func(context.Context) error
}

// newKubeService wires the Kubernetes source, the webhooks and the leader's work.
func newKubeService(k *kubeClients, o kubeOptions, ids *identityService, trustDomain string, log *slog.Logger, reg prometheus.Registerer, publish func(*mesh.Snapshot)) (*kubeService, error) {
	s := &kubeService{}
	status := kubesource.NewStatusWriter(kubesource.StatusConfig{Dynamic: k.dynamic, Logger: log, Registerer: reg})
	s.source = kubesource.New(kubesource.Config{
		Client: k.core, Dynamic: k.dynamic, Extensions: k.extensions,
		Logger: log, Registerer: reg, Publish: publish, ReportStatus: status.Update,
	})
	s.runners = append(s.runners, s.source.Run)

	leaderWork := []func(context.Context) error{
		status.Run,
		func(ctx context.Context) error {
			return kubeca.PublishRoots(ctx, kubeca.RootsConfig{Client: k.core, Roots: ids.ca.RootsPEM, Changed: ids.ca.Changed, Logger: log})
		},
	}
	if o.webhookAddress != "" {
		svc := o.serviceHost()
		values := webhook.Values{
			TrustDomain: trustDomain, AgentImage: o.agentImage, ProxyImage: o.proxyImage,
			CAAddress: orDefault(o.injectCAAddress, svc+":15012"), XDSAddress: orDefault(o.injectXDSAddress, svc+":15010"),
			TokenAudience: o.tokenAudience,
		}
		injectorCfg := webhook.InjectorConfig{Values: values, Version: buildinfo.Version, Logger: log, Registerer: reg}
		if o.injectionTemplate != "" {
			t, err := webhook.LoadTemplate(o.injectionTemplate)
			if err != nil {
				return nil, fmt.Errorf("--injection-template: %w", err)
			}
			injectorCfg.Template = t
		}
		injector, err := webhook.NewInjector(injectorCfg)
		if err != nil {
			return nil, fmt.Errorf("sidecar injection: %w", err)
		}
		validator, err := webhook.NewValidator(webhook.ValidatorConfig{Logger: log, Registerer: reg})
		if err != nil {
			return nil, err
		}
		server, err := webhook.NewServer(webhook.ServerConfig{
			Address: o.webhookAddress, GetCertificate: ids.api.ServingCertificate,
			Injector: injector, Validator: validator, Logger: log,
		})
		if err != nil {
			return nil, err
		}
		l, err := server.Listen()
		if err != nil {
			return nil, err
		}
		s.runners = append(s.runners, func(ctx context.Context) error { return server.Serve(ctx, l) })
		leaderWork = append(leaderWork, func(ctx context.Context) error {
			return webhook.KeepCABundle(ctx, webhook.KeepConfig{Client: k.core, CABundle: ids.ca.RootsPEM, Logger: log})
		})
	}
	if !o.leaderElect {
		s.runners = append(s.runners, leaderWork...)
		return s, nil
	}
	s.runners = append(s.runners, func(ctx context.Context) error {
		return runAsLeader(ctx, leaderConfig{
			Client: k.core, Namespace: o.namespace, Identity: o.podName,
			LeaseDuration: o.leaseDuration, Logger: log,
		}, leaderWork)
	})
	return s, nil
}

// serviceHost is the name palisaded's Service (of the install manifests) has in the
// cluster's DNS.
func (o kubeOptions) serviceHost() string { return "palisaded." + o.namespace + ".svc" }

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
