package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/palisade-mesh/palisade/deploy"
	"github.com/palisade-mesh/palisade/webhook"
)

var update = flag.Bool("update", false, "rewrite testdata/install.golden.yaml")

const golden = "testdata/install.golden.yaml"

func TestRenderDefaultMatchesGolden(t *testing.T) {
	got, err := deploy.Render(deploy.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("Render(DefaultOptions()) differs from %s (go test ./deploy -update rewrites it; review the diff) (-want +got):\n%s", golden, diff)
	}
}

// TestRenderedDocumentsDecodeStrictly decodes every document into its Go type,
// refusing unknown and duplicate fields: the manifests say what they mean to.
func TestRenderedDocumentsDecodeStrictly(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), apiextensionsv1.AddToScheme(scheme)); err != nil {
		t.Fatal(err)
	}
	decoder := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	for name, o := range map[string]deploy.Options{
		"default":        deploy.DefaultOptions(),
		"out of cluster": {GatewayAPI: true, WebhookURL: "https://127.0.0.1:9443"},
	} {
		t.Run(name, func(t *testing.T) {
			data, err := deploy.Render(o)
			if err != nil {
				t.Fatal(err)
			}
			reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
			kinds := map[string]int{}
			for {
				doc, err := reader.Read()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				obj, gvk, err := decoder.Decode(doc, nil, nil)
				if err != nil {
					t.Errorf("document %q...: %v", firstLines(doc), err)
					continue
				}
				if _, typed := obj.(*unstructured.Unstructured); typed {
					t.Errorf("%v decoded without a Go type", gvk)
				}
				kinds[gvk.Kind]++
			}
			if kinds["CustomResourceDefinition"] < 8 || kinds["MutatingWebhookConfiguration"] != 1 || kinds["ValidatingWebhookConfiguration"] != 1 {
				t.Errorf("rendered kinds %v; want the CRDs and both webhook configurations", kinds)
			}
		})
	}
}

func firstLines(doc []byte) string {
	lines := strings.SplitN(string(doc), "\n", 4)
	return strings.Join(lines[:min(3, len(lines))], " ")
}

// rendered is an installation's objects, typed.
type rendered []*unstructured.Unstructured

func render(t *testing.T, o deploy.Options) rendered {
	t.Helper()
	objs, err := deploy.Objects(o)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func (r rendered) kinds() []string {
	var kinds []string
	for _, obj := range r {
		if k := obj.GetKind(); len(kinds) == 0 || kinds[len(kinds)-1] != k {
			kinds = append(kinds, k)
		}
	}
	return kinds
}

func (r rendered) names(kind string) []string {
	var names []string
	for _, obj := range r {
		if obj.GetKind() == kind {
			names = append(names, obj.GetName())
		}
	}
	return names
}

// get decodes the only object of a kind into out, reporting whether there is one.
func (r rendered) get(t *testing.T, kind string, out any) bool {
	t.Helper()
	for _, obj := range r {
		if obj.GetKind() == kind {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, out); err != nil {
				t.Fatal(err)
			}
			return true
		}
	}
	return false
}

func TestRenderDefaults(t *testing.T) {
	r := render(t, deploy.DefaultOptions())
	wantKinds := []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
		"Role", "RoleBinding", "Deployment", "Service", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
	if diff := cmp.Diff(wantKinds, r.kinds()); diff != "" {
		t.Errorf("kinds in order (-want +got):\n%s", diff)
	}
	if crds := r.names("CustomResourceDefinition"); len(crds) != 8 || slices.ContainsFunc(crds, func(n string) bool { return strings.HasSuffix(n, ".gateway.networking.k8s.io") }) {
		t.Errorf("CRDs %v; want Palisade's 8 and no Gateway API ones", crds)
	}
	var d appsv1.Deployment
	r.get(t, "Deployment", &d)
	c := d.Spec.Template.Spec.Containers[0]
	if d.Namespace != deploy.DefaultNamespace || *d.Spec.Replicas != deploy.DefaultReplicas || c.Image != deploy.DefaultImage {
		t.Errorf("Deployment %s/%s, %d replicas of %s", d.Namespace, d.Name, *d.Spec.Replicas, c.Image)
	}
	for _, arg := range []string{"--source=kubernetes", "--webhook-address=:15017", "--xds-address=:15010", "--trust-domain=cluster.local", "--data-dir=/var/lib/palisade"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("palisaded's args %v lack %s", c.Args, arg)
		}
	}
	sc := c.SecurityContext
	if !*sc.ReadOnlyRootFilesystem || !*sc.RunAsNonRoot || *sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container security context %+v is not locked down", sc)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port.IntValue() != deploy.PortMonitoring {
		t.Errorf("readiness probe %+v, want GET /healthz/ready on %d", p, deploy.PortMonitoring)
	}

	var m admissionregistrationv1.MutatingWebhookConfiguration
	r.get(t, "MutatingWebhookConfiguration", &m)
	inject := m.Webhooks[0]
	if m.Name != webhook.MutatingConfigurationName || inject.Name != deploy.InjectWebhookName || *inject.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("mutating webhook %s/%s, failure policy %s", m.Name, inject.Name, *inject.FailurePolicy)
	}
	if s := inject.ClientConfig.Service; s == nil || s.Namespace != deploy.DefaultNamespace || s.Name != deploy.Name || *s.Path != webhook.InjectPath || *s.Port != deploy.PortWebhooks || inject.ClientConfig.URL != nil {
		t.Errorf("injection webhook client config %+v, want palisaded's Service at %s", inject.ClientConfig, webhook.InjectPath)
	}
	if len(inject.ClientConfig.CABundle) != 0 {
		t.Error("the manifests set a caBundle; re-applying them would erase the one palisaded writes")
	}
	if got := inject.NamespaceSelector.MatchLabels[webhook.NamespaceLabel]; got != webhook.NamespaceLabelEnabled {
		t.Errorf("namespace selector %+v", inject.NamespaceSelector)
	}
	if e := inject.ObjectSelector.MatchExpressions; len(e) != 1 || e[0].Key != webhook.InjectKey || !slices.Equal(e[0].Values, []string{"false"}) {
		t.Errorf("object selector %+v, want the opt-out label excluded", inject.ObjectSelector)
	}
	if d.Spec.Template.Labels[webhook.InjectKey] != "false" {
		t.Error("palisaded's own pods are not opted out of injection")
	}

	var v admissionregistrationv1.ValidatingWebhookConfiguration
	r.get(t, "ValidatingWebhookConfiguration", &v)
	validate := v.Webhooks[0]
	if v.Name != webhook.ValidatingConfigurationName || validate.Name != deploy.ValidateWebhookName || *validate.ClientConfig.Service.Path != webhook.ValidatePath {
		t.Errorf("validating webhook %s/%s at %v", v.Name, validate.Name, validate.ClientConfig)
	}
}

func TestRenderOptions(t *testing.T) {
	o := deploy.Options{
		Namespace: "mesh", Image: "registry.example/palisaded:v9", Replicas: 3, TrustDomain: "example.org",
		InjectionFailurePolicy: admissionregistrationv1.Ignore, ValidationFailurePolicy: admissionregistrationv1.Ignore,
		GatewayAPI: true, IncludePalisaded: true,
	}
	r := render(t, o)
	if ns := r.names("Namespace"); !slices.Equal(ns, []string{"mesh"}) {
		t.Errorf("namespaces %v", ns)
	}
	if crds := r.names("CustomResourceDefinition"); !slices.Contains(crds, "httproutes.gateway.networking.k8s.io") || !slices.Contains(crds, "virtualservices.networking.istio.io") {
		t.Errorf("CRDs %v; want Palisade's and the Gateway API's", crds)
	}
	var d appsv1.Deployment
	r.get(t, "Deployment", &d)
	if d.Namespace != "mesh" || *d.Spec.Replicas != 3 || d.Spec.Template.Spec.Containers[0].Image != o.Image || !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--trust-domain=example.org") {
		t.Errorf("Deployment %s/%s: %d replicas, container %+v", d.Namespace, d.Name, *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0])
	}
	var b rbacv1.ClusterRoleBinding
	r.get(t, "ClusterRoleBinding", &b)
	if b.Subjects[0].Namespace != "mesh" {
		t.Errorf("ClusterRoleBinding subjects %+v", b.Subjects)
	}
	var cr rbacv1.ClusterRole
	r.get(t, "ClusterRole", &cr)
	for _, rule := range cr.Rules {
		if slices.Contains(rule.APIGroups, "gateway.networking.k8s.io") {
			t.Errorf("ClusterRole rule %+v: palisaded does not read the Gateway API", rule)
		}
	}
	var m admissionregistrationv1.MutatingWebhookConfiguration
	r.get(t, "MutatingWebhookConfiguration", &m)
	var v admissionregistrationv1.ValidatingWebhookConfiguration
	r.get(t, "ValidatingWebhookConfiguration", &v)
	if *m.Webhooks[0].FailurePolicy != admissionregistrationv1.Ignore || *v.Webhooks[0].FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("failure policies %s, %s; want Ignore", *m.Webhooks[0].FailurePolicy, *v.Webhooks[0].FailurePolicy)
	}
	if m.Webhooks[0].ClientConfig.Service.Namespace != "mesh" {
		t.Errorf("injection webhook service %+v", m.Webhooks[0].ClientConfig.Service)
	}
}

func TestRenderOutOfCluster(t *testing.T) {
	r := render(t, deploy.Options{WebhookURL: "https://127.0.0.1:9443"})
	for _, kind := range []string{"Deployment", "Service"} {
		if names := r.names(kind); len(names) != 0 {
			t.Errorf("%s %v rendered without IncludePalisaded", kind, names)
		}
	}
	if names := r.names("ServiceAccount"); len(names) != 1 {
		t.Errorf("service accounts %v; the RBAC objects stay", names)
	}
	var m admissionregistrationv1.MutatingWebhookConfiguration
	r.get(t, "MutatingWebhookConfiguration", &m)
	var v admissionregistrationv1.ValidatingWebhookConfiguration
	r.get(t, "ValidatingWebhookConfiguration", &v)
	for _, c := range []struct {
		cfg  admissionregistrationv1.WebhookClientConfig
		want string
	}{{m.Webhooks[0].ClientConfig, "https://127.0.0.1:9443/inject"}, {v.Webhooks[0].ClientConfig, "https://127.0.0.1:9443/validate"}} {
		if c.cfg.URL == nil || *c.cfg.URL != c.want || c.cfg.Service != nil {
			t.Errorf("client config %+v, want url %s only", c.cfg, c.want)
		}
	}
}

// TestClusterRoleIsLeastPrivilege checks properties of the RBAC rules that a new rule
// could break unnoticed: no wildcards, statuses writable but not objects, Secrets
// only in palisaded's namespace, webhook configurations writable only by name.
func TestClusterRoleIsLeastPrivilege(t *testing.T) {
	r := render(t, deploy.DefaultOptions())
	var cr rbacv1.ClusterRole
	r.get(t, "ClusterRole", &cr)
	var role rbacv1.Role
	r.get(t, "Role", &role)
	for _, rule := range append(slices.Clone(cr.Rules), role.Rules...) {
		if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") {
			t.Errorf("rule %+v has a wildcard", rule)
		}
		if slices.ContainsFunc(rule.Verbs, func(v string) bool {
			return v == "delete" || v == "deletecollection" || v == "escalate" || v == "bind" || v == "impersonate"
		}) {
			t.Errorf("rule %+v allows more than palisaded does", rule)
		}
	}
	statusRules := 0
	for _, rule := range cr.Rules {
		writes := slices.ContainsFunc(rule.Verbs, func(v string) bool { return v == "update" || v == "patch" || v == "create" })
		switch {
		case slices.Contains(rule.Resources, "secrets"):
			t.Errorf("cluster-wide rule %+v on Secrets", rule)
		case slices.Contains(rule.Resources, "virtualservices/status"):
			statusRules++
			if !slices.Equal(rule.Verbs, []string{"get", "update", "patch"}) {
				t.Errorf("status rule %+v", rule)
			}
		case slices.Contains(rule.Resources, "virtualservices") && writes:
			t.Errorf("rule %+v writes VirtualServices themselves", rule)
		case slices.Contains(rule.Resources, "mutatingwebhookconfigurations") && writes:
			if !slices.Equal(rule.ResourceNames, []string{webhook.MutatingConfigurationName, webhook.ValidatingConfigurationName}) {
				t.Errorf("rule %+v writes webhook configurations not Palisade's", rule)
			}
		}
	}
	if statusRules != 1 {
		t.Errorf("%d rules on virtualservices/status, want 1", statusRules)
	}
}

func TestRenderRejectsBadOptions(t *testing.T) {
	valid := deploy.DefaultOptions
	tests := []struct {
		name   string
		change func(*deploy.Options)
		want   string
	}{
		{"namespace", func(o *deploy.Options) { o.Namespace = "Palisade_System" }, `namespace "Palisade_System"`},
		{"image", func(o *deploy.Options) { o.Image = "palisaded latest" }, "white space"},
		{"replicas", func(o *deploy.Options) { o.Replicas = -1 }, "replicas -1 is negative"},
		{"trust domain", func(o *deploy.Options) { o.TrustDomain = "Example.ORG/x" }, `trust domain "Example.ORG/x"`},
		{"injection failure policy", func(o *deploy.Options) { o.InjectionFailurePolicy = "fail" }, `injection failure policy "fail": use Fail or Ignore`},
		{"validation failure policy", func(o *deploy.Options) { o.ValidationFailurePolicy = "Never" }, `validation failure policy "Never"`},
		{"webhook URL scheme", func(o *deploy.Options) { o.WebhookURL = "http://127.0.0.1:9443" }, "the scheme must be https"},
		{"webhook URL port", func(o *deploy.Options) { o.WebhookURL = "https://palisaded.example" }, "want https://HOST:PORT"},
		{"webhook URL path", func(o *deploy.Options) { o.WebhookURL = "https://127.0.0.1:9443/inject" }, "without user, path, query or fragment"},
		{"no palisaded and no URL", func(o *deploy.Options) { o.IncludePalisaded = false }, "the webhook URL is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := valid()
			tc.change(&o)
			_, err := deploy.Render(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Render error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
