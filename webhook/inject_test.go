package webhook_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/palisade-mesh/palisade/webhook"
)

var testValues = webhook.Values{
	TrustDomain: "example.org",
	AgentImage:  "ghcr.io/palisade-mesh/palisade-agent:test",
	ProxyImage:  "envoyproxy/envoy:v1.36.0",
	CAAddress:   "palisaded.palisade-system.svc:15012",
	XDSAddress:  "palisaded.palisade-system.svc:15010",
}

// newInjector returns an injector with testValues and cfg's other settings.
func newInjector(t testing.TB, cfg webhook.InjectorConfig) *webhook.Injector {
	t.Helper()
	if cfg.Values == (webhook.Values{}) {
		cfg.Values = testValues
	}
	i, err := webhook.NewInjector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func podCreation(namespace string, podJSON []byte) admissionv1.AdmissionRequest {
	return admissionv1.AdmissionRequest{
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: namespace,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: podJSON},
	}
}

// inject runs a pod creation through the injector and returns the response and the
// pod with its patch applied (by the JSON patch library the API server uses).
func inject(t *testing.T, i *webhook.Injector, namespace string, podJSON []byte) (*admissionv1.AdmissionResponse, []byte) {
	t.Helper()
	resp := review(t, i, podCreation(namespace, podJSON))
	if !resp.Allowed {
		t.Fatalf("pod refused: %v", resp.Result)
	}
	if resp.Patch == nil {
		return resp, podJSON
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decoding the patch: %v\n%s", err, resp.Patch)
	}
	patched, err := patch.Apply(podJSON)
	if err != nil {
		t.Fatalf("applying the patch: %v\n%s", err, resp.Patch)
	}
	return resp, patched
}

func decodePod(t *testing.T, podJSON []byte) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal(podJSON, &pod); err != nil {
		t.Fatal(err)
	}
	return &pod
}

func names[T any](items []T, name func(T) string) []string {
	out := []string{}
	for _, item := range items {
		out = append(out, name(item))
	}
	return out
}

func containerNames(cs []corev1.Container) []string {
	return names(cs, func(c corev1.Container) string { return c.Name })
}

func volumeNames(vs []corev1.Volume) []string {
	return names(vs, func(v corev1.Volume) string { return v.Name })
}

func findContainer(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s in %v", name, containerNames(cs))
	return corev1.Container{}
}

// controllerPod is a pod as a ReplicaSet creates it: no name and no namespace yet.
// Its app container has a field this k8s.io/api does not know, which must survive.
const controllerPod = `{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"generateName": "web-7d9f8-", "labels": {"app": "web"}, "annotations": {"team": "shop"}},
  "spec": {
    "serviceAccountName": "web",
    "initContainers": [{"name": "migrate", "image": "web:1", "args": ["migrate"]}],
    "containers": [{"name": "app", "image": "web:1", "futureField": {"x": 1}}],
    "volumes": [{"name": "data", "emptyDir": {}}]
  }
}`

func TestInjectDefaultTemplate(t *testing.T) {
	reg := prometheus.NewRegistry()
	i := newInjector(t, webhook.InjectorConfig{Version: "1.2.3", Registerer: reg})
	_, patched := inject(t, i, "shop", []byte(controllerPod))
	pod := decodePod(t, patched)

	if got, want := containerNames(pod.Spec.InitContainers), []string{"palisade-init", "palisade-agent", "palisade-proxy", "migrate"}; !slices.Equal(got, want) {
		t.Errorf("init containers %v, want %v (injected first, the pod's own after)", got, want)
	}
	if got := containerNames(pod.Spec.Containers); !slices.Equal(got, []string{"app"}) {
		t.Errorf("containers %v, want the app's alone", got)
	}
	if !strings.Contains(string(patched), `"futureField":{"x":1}`) {
		t.Errorf("the app container's unknown field was lost:\n%s", patched)
	}
	if got, want := volumeNames(pod.Spec.Volumes), []string{"data", "palisade-token", "palisade-ca-root-cert", "palisade-run", "palisade-podinfo"}; !slices.Equal(got, want) {
		t.Errorf("volumes %v, want %v", got, want)
	}

	capture := findContainer(t, pod.Spec.InitContainers, "palisade-init")
	if got := strings.Join(append(capture.Command, capture.Args...), " "); !strings.HasPrefix(got, "palisade-agent capture --proxy-uid=1337 --inbound-capture-port=15006 --outbound-capture-port=15001 --exclude-inbound-ports=15020") {
		t.Errorf("capture command %q", got)
	}
	if sc := capture.SecurityContext; sc == nil || *sc.RunAsUser != 0 || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("capture security context %+v: root with NET_ADMIN and NET_RAW wanted", sc)
	}

	agent := findContainer(t, pod.Spec.InitContainers, "palisade-agent")
	if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("agent restartPolicy %v, want Always (a native sidecar)", agent.RestartPolicy)
	}
	for _, arg := range []string{
		"--spiffe-id=spiffe://example.org/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)",
		"--trust-domain=example.org",
		"--token-file=/var/run/secrets/tokens/palisade-token",
		"--ca-address=palisaded.palisade-system.svc:15012",
		"--ca-bundle=/var/run/secrets/palisade/root-cert.pem",
		"--envoy-bootstrap=/var/run/palisade/envoy.yaml",
		"--xds-address=palisaded.palisade-system.svc:15010",
	} {
		if !slices.Contains(agent.Args, arg) {
			t.Errorf("agent args %q lack %q", agent.Args, arg)
		}
	}
	if slices.ContainsFunc(agent.Args, func(a string) bool { return strings.HasPrefix(a, "--policy-bundle") }) {
		t.Errorf("agent args %q have policy bundle flags without PolicyBundleURL", agent.Args)
	}
	env := map[string]string{}
	for _, e := range agent.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAMESPACE"] != "metadata.namespace" || env["SERVICE_ACCOUNT"] != "spec.serviceAccountName" {
		t.Errorf("agent env from the downward API %v", env)
	}
	if sc := agent.SecurityContext; sc == nil || *sc.RunAsUser != webhook.DefaultProxyUID {
		t.Errorf("agent security context %+v, want user 1337 (its traffic is not captured)", sc)
	}

	proxy := findContainer(t, pod.Spec.InitContainers, "palisade-proxy")
	if proxy.Image != testValues.ProxyImage || *proxy.SecurityContext.RunAsUser != 1337 ||
		!slices.Equal(append(proxy.Command, proxy.Args...)[:3], []string{"envoy", "-c", "/var/run/palisade/envoy.yaml"}) {
		t.Errorf("proxy %s %q %q user %d", proxy.Image, proxy.Command, proxy.Args, *proxy.SecurityContext.RunAsUser)
	}

	for _, v := range pod.Spec.Volumes {
		switch v.Name {
		case "palisade-token":
			token := v.Projected.Sources[0].ServiceAccountToken
			if token.Audience != "palisade" || *token.ExpirationSeconds != 3600 || token.Path != "palisade-token" {
				t.Errorf("token volume %+v", token)
			}
		case "palisade-ca-root-cert":
			if v.ConfigMap == nil || v.ConfigMap.Name != "palisade-ca-root-cert" {
				t.Errorf("root cert volume %+v", v)
			}
		}
	}

	if pod.Annotations["team"] != "shop" {
		t.Errorf("the pod's annotation was lost: %v", pod.Annotations)
	}
	var status webhook.InjectionStatus
	if err := json.Unmarshal([]byte(pod.Annotations[webhook.StatusAnnotation]), &status); err != nil {
		t.Fatalf("status annotation: %v", err)
	}
	want := webhook.InjectionStatus{
		Version:        "1.2.3",
		InitContainers: []string{"palisade-init", "palisade-agent", "palisade-proxy"},
		Containers:     []string{},
		Volumes:        []string{"palisade-token", "palisade-ca-root-cert", "palisade-run", "palisade-podinfo"},
	}
	if diff := cmp.Diff(want, status); diff != "" {
		t.Errorf("status annotation (-want +got):\n%s", diff)
	}

	// Injecting the result again changes nothing: the API server reinvokes the
	// webhook, and a controller may copy an injected pod's spec.
	if resp, _ := inject(t, i, "shop", patched); resp.Patch != nil {
		t.Errorf("an injected pod was patched again: %s", resp.Patch)
	}
	counts := countsByResult(t, reg, "palisade_webhook_injections_total")
	if counts["injected"] != 1 || counts["already_injected"] != 1 || counts["error"] != 0 {
		t.Errorf("injection counts %v, want one injected and one already_injected", counts)
	}
}

// countsByResult returns the values of a counter vector of reg, by result label.
func countsByResult(t *testing.T, reg *prometheus.Registry, metric string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, f := range families {
		if f.GetName() != metric {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					counts[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return counts
}

func TestInjectMinimalPod(t *testing.T) {
	i := newInjector(t, webhook.InjectorConfig{Values: webhook.Values{
		TrustDomain: "example.org", AgentImage: "agent", ProxyImage: "envoy", CAAddress: "ca:15012", XDSAddress: "xds:15010",
		PolicyBundleURL: "http://palisaded:15016/bundles/palisade", TokenAudience: "mesh", ProxyUID: 2000,
	}})
	// No annotations, init containers or volumes: the patch adds them whole.
	_, patched := inject(t, i, "shop", []byte(`{"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}`))
	pod := decodePod(t, patched)
	if got := containerNames(pod.Spec.InitContainers); !slices.Equal(got, []string{"palisade-init", "palisade-agent", "palisade-proxy"}) {
		t.Errorf("init containers %v", got)
	}
	if pod.Annotations[webhook.StatusAnnotation] == "" {
		t.Errorf("no status annotation: %v", pod.Annotations)
	}
	agent := findContainer(t, pod.Spec.InitContainers, "palisade-agent")
	for _, arg := range []string{"--policy-bundle-url=http://palisaded:15016/bundles/palisade", "--policy-bundle-key=/var/run/secrets/palisade/bundle-signing-key.pub.pem"} {
		if !slices.Contains(agent.Args, arg) {
			t.Errorf("agent args %q lack %q", agent.Args, arg)
		}
	}
	if *agent.SecurityContext.RunAsUser != 2000 || !slices.Contains(findContainer(t, pod.Spec.InitContainers, "palisade-init").Args, "--proxy-uid=2000") {
		t.Errorf("ProxyUID 2000 not used for the agent and the capture")
	}
	if got := pod.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken.Audience; got != "mesh" {
		t.Errorf("token audience %q, want mesh", got)
	}
}

// TestInjectIstioTrafficAnnotations checks that Istio's capture annotations reach
// the capture flags, as one argument each whatever they contain.
func TestInjectIstioTrafficAnnotations(t *testing.T) {
	i := newInjector(t, webhook.InjectorConfig{})
	pod := `{"metadata": {"name": "web", "annotations": {
	  "traffic.sidecar.istio.io/excludeInboundPorts": "8081,8082",
	  "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8\n  - --proxy-uid=0"}},
	  "spec": {"containers": [{"name": "app", "image": "web:1"}]}}`
	_, patched := inject(t, i, "shop", []byte(pod))
	args := findContainer(t, decodePod(t, patched).Spec.InitContainers, "palisade-init").Args
	want := []string{"capture", "--proxy-uid=1337", "--inbound-capture-port=15006", "--outbound-capture-port=15001",
		"--exclude-inbound-ports=15020,8081,8082", "--exclude-outbound-cidrs=10.0.0.0/8\n  - --proxy-uid=0"}
	if diff := cmp.Diff(want, args); diff != "" {
		t.Errorf("capture args (-want +got):\n%s", diff)
	}
}

func TestInjectSkips(t *testing.T) {
	tests := []struct {
		name       string
		meta       string // the pod's metadata
		spec       string // extra spec fields
		wantInject bool
		wantResult string
	}{
		{"opt-out label", `{"labels": {"sidecar.palisade.dev/inject": "false"}}`, "", false, "opted_out"},
		{"opt-out annotation", `{"annotations": {"sidecar.palisade.dev/inject": "false"}}`, "", false, "opted_out"},
		{"Istio opt-out label", `{"labels": {"sidecar.istio.io/inject": "false"}}`, "", false, "opted_out"},
		{"Istio opt-out annotation", `{"annotations": {"sidecar.istio.io/inject": "false"}}`, "", false, "opted_out"},
		{"Palisade's key wins over Istio's", `{"labels": {"sidecar.palisade.dev/inject": "true"}, "annotations": {"sidecar.istio.io/inject": "false"}}`, "", true, "injected"},
		{"a label wins over an annotation", `{"labels": {"sidecar.palisade.dev/inject": "true"}, "annotations": {"sidecar.palisade.dev/inject": "false"}}`, "", true, "injected"},
		{"explicit opt-in", `{"annotations": {"sidecar.palisade.dev/inject": "true"}}`, "", true, "injected"},
		{"not a boolean", `{"annotations": {"sidecar.palisade.dev/inject": "maybe"}}`, "", true, "injected"},
		{"status annotation", `{"annotations": {"sidecar.palisade.dev/status": "{}"}}`, "", false, "already_injected"},
		{"agent container", `{}`, `"initContainers": [{"name": "palisade-agent", "image": "a"}],`, false, "already_injected"},
		{"a container the template injects", `{}`, `"initContainers": [{"name": "palisade-proxy", "image": "a"}],`, false, "already_injected"},
		{"host network", `{}`, `"hostNetwork": true,`, false, "host_network"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			i := newInjector(t, webhook.InjectorConfig{Registerer: reg})
			pod := `{"metadata": ` + tt.meta + `, "spec": {` + tt.spec + ` "containers": [{"name": "app", "image": "web:1"}]}}`
			resp, _ := inject(t, i, "shop", []byte(pod))
			if injected := resp.Patch != nil; injected != tt.wantInject {
				t.Errorf("injected %v, want %v", injected, tt.wantInject)
			}
			if counts := countsByResult(t, reg, "palisade_webhook_injections_total"); counts[tt.wantResult] != 1 {
				t.Errorf("counts %v, want one %s", counts, tt.wantResult)
			}
		})
	}
}

// TestInjectOtherRequests checks that what is not a pod creation passes untouched.
func TestInjectOtherRequests(t *testing.T) {
	i := newInjector(t, webhook.InjectorConfig{})
	pod := []byte(`{"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}`)
	update := podCreation("shop", pod)
	update.Operation = admissionv1.Update
	binding := podCreation("shop", pod)
	binding.SubResource = "binding"
	service := podCreation("shop", []byte(`{"metadata": {"name": "web"}}`))
	service.Kind = metav1.GroupVersionKind{Version: "v1", Kind: "Service"}
	for name, req := range map[string]admissionv1.AdmissionRequest{"update": update, "subresource": binding, "service": service} {
		t.Run(name, func(t *testing.T) {
			if resp := review(t, i, req); !resp.Allowed || resp.Patch != nil {
				t.Errorf("allowed %v, patch %s: want allowed, no patch", resp.Allowed, resp.Patch)
			}
		})
	}
}

// TestInjectRefusals checks that a pod the sidecar cannot be added to is refused
// with a message saying why, rather than let into the mesh's namespace without it.
func TestInjectRefusals(t *testing.T) {
	// The annotation is written unquoted: a value that is not YAML breaks the output.
	unquoted, err := webhook.ParseTemplate("unquoted.yaml", `annotations: {copied: {{ index .Pod.Annotations "x" }}}`)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		template string // "" for the default
		pod      string
		want     string
	}{
		{"volume name taken", "", `{"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "palisade-run", "emptyDir": {}}]}}`,
			"the pod has a volume named palisade-run, which the sidecar adds"},
		{"template output not YAML", "unquoted", `{"metadata": {"name": "web", "annotations": {"x": "[unclosed"}}, "spec": {"containers": [{"name": "app"}]}}`,
			"the injection template's output is not a sidecar"},
		{"not a pod", "", `{"metadata": "web"}`, "decoding the pod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			cfg := webhook.InjectorConfig{Registerer: reg}
			if tt.template != "" {
				cfg.Template = unquoted
			}
			i := newInjector(t, cfg)
			resp := review(t, i, podCreation("shop", []byte(tt.pod)))
			if resp.Allowed || resp.Patch != nil || resp.Result == nil || !strings.Contains(resp.Result.Message, tt.want) {
				t.Fatalf("allowed %v, result %+v: want refused with %q", resp.Allowed, resp.Result, tt.want)
			}
			if !strings.HasPrefix(resp.Result.Message, "palisade sidecar injector: ") {
				t.Errorf("message %q does not say who refused", resp.Result.Message)
			}
			if counts := countsByResult(t, reg, "palisade_webhook_injections_total"); counts["error"] != 1 {
				t.Errorf("counts %v, want one error", counts)
			}
		})
	}
}

func TestCustomTemplate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custom.yaml")
	const text = `containers:
- name: mesh-helper
  image: {{ toJSON .AgentImage }}
  args: [{{ toJSON .Pod.Namespace }}, {{ toJSON .TrustDomain }}]
annotations:
  example.com/a~b: {{ toJSON .Pod.Name }}
`
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	tmpl, err := webhook.LoadTemplate(path)
	if err != nil {
		t.Fatal(err)
	}
	i := newInjector(t, webhook.InjectorConfig{Template: tmpl})
	resp, patched := inject(t, i, "shop", []byte(`{"metadata": {"name": "web", "annotations": {"team": "shop"}},
	  "spec": {"containers": [{"name": "app", "image": "web:1"}]}}`))
	if !strings.Contains(string(resp.Patch), `"path":"/metadata/annotations/example.com~1a~0b"`) {
		t.Errorf("annotation key not escaped as a JSON pointer: %s", resp.Patch)
	}
	pod := decodePod(t, patched)
	if got := containerNames(pod.Spec.Containers); !slices.Equal(got, []string{"app", "mesh-helper"}) {
		t.Errorf("containers %v, want the app's then the injected one", got)
	}
	if got := findContainer(t, pod.Spec.Containers, "mesh-helper").Args; !slices.Equal(got, []string{"shop", "example.org"}) {
		t.Errorf("args %q: the request's namespace and the trust domain wanted", got)
	}
	if pod.Annotations["example.com/a~b"] != "web" || pod.Annotations["team"] != "shop" {
		t.Errorf("annotations %v", pod.Annotations)
	}
	if len(pod.Spec.InitContainers) != 0 || len(pod.Spec.Volumes) != 0 {
		t.Errorf("the template injects no init container or volume; got %v %v", pod.Spec.InitContainers, pod.Spec.Volumes)
	}
	if resp, _ := inject(t, i, "shop", patched); resp.Patch != nil {
		t.Errorf("an injected pod was patched again: %s", resp.Patch)
	}
}

func TestBadTemplates(t *testing.T) {
	tests := []struct {
		name string
		text string
		want string // in the error of LoadTemplate, else of NewInjector
	}{
		{"syntax", "containers:\n- name: x\n  image: {{ .AgentImage \n", "unclosed action started at bad.yaml:3"},
		{"unknown function", "containers:\n- name: {{ quote .AgentImage }}\n", `bad.yaml:2: function "quote" not defined`},
		{"unknown value", "containers:\n- name: x\n  image: {{ .Image }}\n", `bad.yaml:3:12: executing "bad.yaml" at <.Image>: can't evaluate field Image`},
		{"missing map key", "containers:\n- name: {{ .Pod.Labels.app }}\n", `map has no entry for key "app"`},
		{"misspelt field", "containers:\n- name: x\n  imagee: y\n", `unknown field "imagee"`},
		{"not a sidecar", "- name: x\n", "the injection template's output is not a sidecar"},
		{"container without a name", "containers:\n- image: x\n", "a container or a volume without a name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(path, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			tmpl, err := webhook.LoadTemplate(path)
			if err == nil {
				_, err = webhook.NewInjector(webhook.InjectorConfig{Template: tmpl, Values: testValues})
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one with %q", err, tt.want)
			}
		})
	}
	if _, err := webhook.LoadTemplate(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: error %v, want one naming it", err)
	}
}

func TestNewInjectorRequiresValues(t *testing.T) {
	_, err := webhook.NewInjector(webhook.InjectorConfig{Values: webhook.Values{TrustDomain: "Example.org/x", ProxyUID: -1}})
	for _, want := range []string{`TrustDomain "Example.org/x": `, "AgentImage is required", "ProxyImage is required", "CAAddress is required", "XDSAddress is required", "ProxyUID -1 is negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one with %q", err, want)
		}
	}
}
