package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
	"github.com/palisade-mesh/palisade/deploy"
)

// installFieldManager owns the fields palisadectl applies.
const installFieldManager = "palisadectl"

func runInstall(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("install", "install [flags]",
		"Prints the manifests that install Palisade on Kubernetes: its namespace, the CRDs of the\n"+
			"kinds it reads, palisaded's service account, roles, Deployment and Service, and the\n"+
			"sidecar injection and validation webhook configurations. With --apply, applies them to\n"+
			"the cluster instead (server-side apply; the CRDs first, once they are established the\n"+
			"rest) and prints each object applied.\n\n"+
			"Injection is enabled per namespace: kubectl label namespace NAME palisade-injection=enabled.", stderr)
	o := deploy.DefaultOptions()
	fs.StringVar(&o.Namespace, "namespace", deploy.DefaultNamespace, "palisaded's namespace")
	fs.StringVar(&o.Image, "image", defaultImage(), "palisaded's image")
	replicas := fs.Int("replicas", deploy.DefaultReplicas, "palisaded's replicas (they elect a leader)")
	fs.StringVar(&o.TrustDomain, "trust-domain", deploy.DefaultTrustDomain, "SPIFFE trust domain of the mesh's identities")
	fs.BoolVar(&o.GatewayAPI, "gateway-api", false, "also install the Gateway API's standard-channel CRDs")
	injection := fs.String("injection-failure-policy", string(admissionregistrationv1.Fail), "what the API server does with a pod to inject when the webhook is unreachable: Fail or Ignore")
	validation := fs.String("validation-failure-policy", string(admissionregistrationv1.Fail), "what the API server does with a configuration object when the validation webhook is unreachable: Fail or Ignore")
	fs.StringVar(&o.WebhookURL, "webhook-url", "", "https://HOST:PORT of a palisaded running outside the cluster: the webhooks are called there, and palisaded's Deployment and Service are left out")
	apply := fs.Bool("apply", false, "apply the manifests to the cluster instead of printing them")
	kubeconfig := fs.String("kubeconfig", "", "with --apply: kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	timeout := fs.Duration("timeout", time.Minute, "with --apply: how long to wait for the CRDs to be established")
	out := fs.String("o", "", "write the manifests to this file (- for standard output; the default without --apply)")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	if *replicas < 1 || *replicas > 1000 {
		return fmt.Errorf("%w: --replicas %d: want 1 to 1000", errUsage, *replicas)
	}
	o.Replicas = int32(*replicas)
	o.InjectionFailurePolicy = admissionregistrationv1.FailurePolicyType(*injection)
	o.ValidationFailurePolicy = admissionregistrationv1.FailurePolicyType(*validation)
	o.IncludePalisaded = o.WebhookURL == ""
	if *kubeconfig != "" && !*apply {
		return fmt.Errorf("%w: --kubeconfig needs --apply", errUsage)
	}

	if *out == "" && !*apply {
		*out = "-"
	}
	if *out != "" {
		data, err := deploy.Render(o)
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if *out == "-" {
			if _, err := stdout.Write(data); err != nil {
				return err
			}
		} else if err := os.WriteFile(*out, data, 0o644); err != nil {
			return err
		}
	}
	if !*apply {
		return nil
	}
	objs, err := deploy.Objects(o)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: *kubeconfig, Precedence: clientcmd.NewDefaultClientConfigLoadingRules().Precedence},
		&clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	a, err := newApplier(cfg, stdout)
	if err != nil {
		return err
	}
	return a.install(context.Background(), objs, *timeout)
}

// defaultImage is palisaded's image of this palisadectl's release.
func defaultImage() string {
	if buildinfo.Version == "dev" {
		return deploy.DefaultImage
	}
	return deploy.ImageRepository + ":" + buildinfo.Version
}

// applier applies objects with server-side apply.
type applier struct {
	client dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	out    io.Writer
}

func newApplier(cfg *rest.Config, out io.Writer) (*applier, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "palisadectl/" + buildinfo.Version
	// A request or two per object: client-go's default of 5 per second would make
	// an install take many seconds for no one's benefit.
	cfg.QPS, cfg.Burst = 50, 100
	// client-go also logs the errors it returns (discovery's, say) through klog;
	// palisadectl reports them once, itself.
	klog.SetLogger(logr.Discard())
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &applier{client: client, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc)), out: out}, nil
}

// install applies the CRDs, waits until the API server serves them, then applies the
// rest, in order.
func (a *applier) install(ctx context.Context, objs []*unstructured.Unstructured, timeout time.Duration) error {
	isCRD := func(u *unstructured.Unstructured) bool { return u.GroupVersionKind().GroupKind() == crdKind }
	var crds, rest []*unstructured.Unstructured
	for _, obj := range objs {
		if isCRD(obj) {
			crds = append(crds, obj)
		} else {
			rest = append(rest, obj)
		}
	}
	for _, obj := range crds {
		if err := a.apply(ctx, obj); err != nil {
			return err
		}
	}
	for _, crd := range crds {
		if err := a.waitEstablished(ctx, crd.GetName(), timeout); err != nil {
			return err
		}
	}
	a.mapper.Reset() // discovery now lists the new kinds
	for _, obj := range rest {
		if err := a.apply(ctx, obj); err != nil {
			return err
		}
	}
	return nil
}

var (
	crdKind     = schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}
	crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// apply applies one object, taking over fields other managers set (this is the
// installer), and prints whether it was created, changed or left unchanged.
func (a *applier) apply(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	var resource dynamic.ResourceInterface = a.client.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		resource = a.client.Resource(mapping.Resource).Namespace(obj.GetNamespace())
	}
	before := ""
	switch old, err := resource.Get(ctx, obj.GetName(), metav1.GetOptions{}); {
	case err == nil:
		before = old.GetResourceVersion()
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	applied, err := resource.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: installFieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("applying %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	result := "configured"
	switch before {
	case "":
		result = "created"
	case applied.GetResourceVersion():
		result = "unchanged"
	}
	name := strings.ToLower(gvk.Kind)
	if gvk.Group != "" {
		name += "." + gvk.Group
	}
	name += "/" + obj.GetName()
	if ns := obj.GetNamespace(); ns != "" {
		name += " -n " + ns
	}
	_, err = fmt.Fprintf(a.out, "%s %s\n", name, result)
	return err
}

// waitEstablished waits until the API server serves a CRD's kind.
func (a *applier) waitEstablished(ctx context.Context, name string, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		crd, err := a.client.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, c := range conditions {
			c, _ := c.(map[string]any)
			if c["type"] == "Established" {
				last = fmt.Sprintf("Established is %v: %v", c["status"], c["message"])
				if c["status"] == "True" {
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s not established after %s (%s): %w", name, timeout, last, err)
	}
	return nil
}
