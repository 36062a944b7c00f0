package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"text/template"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
)

// Names that pods, namespaces and the webhook configuration share with Palisade.
const (
	// NamespaceLabel is the label that enables injection in a namespace, with the
	// value NamespaceLabelEnabled; the MutatingWebhookConfiguration's
	// namespaceSelector matches it, so the injector never reads namespaces.
	NamespaceLabel        = "palisade-injection"
	NamespaceLabelEnabled = "enabled"
	// InjectKey, as a pod label or annotation with the value "false", keeps a pod
	// out of the mesh. Istio's IstioInjectKey is honoured too; see Injector.
	InjectKey      = "sidecar.palisade.dev/inject"
	IstioInjectKey = "sidecar.istio.io/inject"
	// StatusAnnotation marks an injected pod; its value is an InjectionStatus.
	StatusAnnotation = "sidecar.palisade.dev/status"
	// AgentContainerName is the agent's container in the default template. A pod
	// that has one is taken as injected, whatever the template.
	AgentContainerName = "palisade-agent"
)

// InjectionStatus is the value of StatusAnnotation (as JSON): what was injected, so
// that tools can tell Palisade's containers from the application's.
type InjectionStatus struct {
	Version        string   `json:"version"`
	InitContainers []string `json:"initContainers"`
	Containers     []string `json:"containers"`
	Volumes        []string `json:"volumes"`
}

// InjectorConfig configures an Injector.
type InjectorConfig struct {
	// Template renders the sidecar; nil means DefaultTemplate.
	Template *template.Template
	Values
	// Version is recorded in the status annotation of injected pods (palisaded's
	// version).
	Version    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Injector is the sidecar injection webhook, an http.Handler of
// admission.k8s.io/v1 AdmissionReviews of pod creations. It answers every other
// request with allowed and no patch.
//
// A pod is injected unless
//   - it opts out: sidecar.palisade.dev/inject: "false" as a label or an
//     annotation (a label wins over an annotation, as in Istio); without either,
//     Istio's sidecar.istio.io/inject decides the same way;
//   - it is already injected: it has StatusAnnotation or a container named as one
//     the template renders (or AgentContainerName), so injection is idempotent:
//     an injected pod's spec created again, or a reinvocation, is left as it is;
//   - it uses the host's network, where capture would redirect the node's traffic.
//
// The injection is a JSON patch that sets whole arrays (initContainers, containers,
// volumes), so it applies whether the pod has them or not, and keeps the pod's own
// entries byte for byte. A pod that the sidecar cannot be added to (the template
// fails for it, or it has a volume named as one of the sidecar's) is refused with
// the error: letting it through uninjected would run the workload outside the mesh
// without anyone being told, the one outcome a zero-trust mesh must not choose
// silently (Istio refuses too). The failurePolicy of the webhook configuration
// decides only what happens when the injector cannot be reached.
type Injector struct {
	template *template.Template
	values   Values
	version  string
	log      *slog.Logger
	results  map[string]prometheus.Counter
}

// Results of an injection request, the values of the metric's result label.
const (
	resultInjected        = "injected"
	resultOptedOut        = "opted_out"
	resultAlreadyInjected = "already_injected"
	resultHostNetwork     = "host_network"
	resultError           = "error"
)

// NewInjector checks the configuration and renders the template once for a sample
// pod, so that a template that cannot work fails palisaded's start rather than
// every pod creation.
func NewInjector(cfg InjectorConfig) (*Injector, error) {
	values := cfg.Values.withDefaults()
	if err := values.check(); err != nil {
		return nil, fmt.Errorf("injector: %w", err)
	}
	i := &Injector{template: cfg.Template, values: values, version: cfg.Version, log: cfg.Logger}
	if i.template == nil {
		i.template = DefaultTemplate
	}
	if i.log == nil {
		i.log = slog.New(slog.DiscardHandler)
	}
	sample := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sample", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if _, err := render(i.template, TemplateData{Values: values, Pod: sample}); err != nil {
		return nil, fmt.Errorf("injector: template %s: %w", i.template.Name(), err)
	}

	injections := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_webhook_injections_total",
		Help: "Pod creations seen by the sidecar injector, by result: injected, opted_out, already_injected, host_network or error (refused).",
	}, []string{"result"})
	i.results = map[string]prometheus.Counter{}
	for _, r := range []string{resultInjected, resultOptedOut, resultAlreadyInjected, resultHostNetwork, resultError} {
		i.results[r] = injections.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(injections); err != nil {
			return nil, fmt.Errorf("injector metrics: %w", err)
		}
	}
	return i, nil
}

// ServeHTTP answers an AdmissionReview.
func (i *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveReview(w, r, i.log, i.decide)
}

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

func (i *Injector) decide(_ context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req.Kind != podKind || req.SubResource != "" || req.Operation != admissionv1.Create {
		return allowed()
	}
	var pod corev1.Pod
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(req.Object.Raw, &pod); err != nil {
		i.results[resultError].Inc()
		return denied(&metav1.Status{Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest,
			Message: fmt.Sprintf("palisade sidecar injector: decoding the pod: %v", err)})
	}
	// A controller's pods have neither a namespace nor a name yet.
	pod.Namespace = req.Namespace
	log := i.log.With("namespace", pod.Namespace, "pod", podName(&pod))

	if result := skipReason(&pod); result != "" {
		i.results[result].Inc()
		log.Debug("pod not injected", "reason", result)
		return allowed()
	}
	patch, result, err := i.patch(&pod, req.Object.Raw)
	i.results[result].Inc()
	switch {
	case err != nil:
		log.Error("pod refused: injection failed", "error", err)
		return denied(&metav1.Status{Code: http.StatusInternalServerError, Reason: metav1.StatusReasonInternalError,
			Message: fmt.Sprintf("palisade sidecar injector: %v (set the label %s: \"false\" to create the pod without the sidecar)", err, InjectKey)})
	case patch == nil:
		log.Debug("pod not injected", "reason", result)
		return allowed()
	}
	log.Info("sidecar injected")
	jsonPatch := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, PatchType: &jsonPatch, Patch: patch}
}

// podName names a pod in logs: a controller's pods only have a generateName.
func podName(pod *corev1.Pod) string {
	if pod.Name == "" && pod.GenerateName != "" {
		return pod.GenerateName + "*"
	}
	return pod.Name
}

// skipReason says why a pod is left alone before anything is rendered: a metric
// result, or "" to go on.
func skipReason(pod *corev1.Pod) string {
	switch {
	case optedOut(pod):
		return resultOptedOut
	case pod.Annotations[StatusAnnotation] != "" || hasContainer(pod, AgentContainerName):
		return resultAlreadyInjected
	case pod.Spec.HostNetwork:
		return resultHostNetwork
	}
	return ""
}

// optedOut reads the opt-out keys: Palisade's, when set as a label or an
// annotation, decides; else Istio's. A label wins over an annotation. A value that
// is not a boolean is ignored.
func optedOut(pod *corev1.Pod) bool {
	for _, key := range []string{InjectKey, IstioInjectKey} {
		for _, values := range []map[string]string{pod.Labels, pod.Annotations} {
			v, ok := values[key]
			if !ok {
				continue
			}
			if inject, err := strconv.ParseBool(v); err == nil {
				return !inject
			}
		}
	}
	return false
}

func hasContainer(pod *corev1.Pod, name string) bool {
	named := func(c corev1.Container) bool { return c.Name == name }
	return slices.ContainsFunc(pod.Spec.InitContainers, named) || slices.ContainsFunc(pod.Spec.Containers, named)
}
