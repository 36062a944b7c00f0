package webhook_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/palisade-mesh/palisade/test/kube"
	"github.com/palisade-mesh/palisade/webhook"
)

const (
	injectWebhookName   = "inject.sidecar.palisade.dev"
	validateWebhookName = "validate.palisade.dev"
)

// webhookConfigurations registers both webhooks at url without a caBundle, as the
// install manifests do: KeepCABundle has to write it.
func webhookConfigurations(t *testing.T, client kubernetes.Interface, url string) {
	t.Helper()
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	ifNeeded := admissionregistrationv1.IfNeededReinvocationPolicy
	timeout := int32(10)
	injectURL, validateURL := url+webhook.InjectPath, url+webhook.ValidatePath
	mutating := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: webhook.MutatingConfigurationName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         injectWebhookName,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &injectURL},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{webhook.NamespaceLabel: webhook.NamespaceLabelEnabled}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
			ReinvocationPolicy:      &ifNeeded,
		}},
	}
	validating := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: webhook.ValidatingConfigurationName},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:         validateWebhookName,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &validateURL},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
				Rule: admissionregistrationv1.Rule{
					APIGroups:   []string{"networking.istio.io", "security.istio.io", "policy.palisade.dev"},
					APIVersions: []string{"*"}, Resources: []string{"*"},
				},
			}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
		}},
	}
	admission := client.AdmissionregistrationV1()
	if _, err := admission.MutatingWebhookConfigurations().Create(t.Context(), mutating, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admission.ValidatingWebhookConfigurations().Create(t.Context(), validating, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testPod is a pod as a ReplicaSet creates it. Its service account is named: the
// test API server runs without the ServiceAccount admission plugin, which would
// set "default", and a projected token needs one.
func testPod(labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers:         []corev1.Container{{Name: "app", Image: "web:1"}},
		},
	}
}

// createPod creates pod; with dryRun, the API server runs admission and returns the
// result without storing it.
func createPod(ctx context.Context, client kubernetes.Interface, namespace string, pod *corev1.Pod, dryRun bool) (*corev1.Pod, error) {
	opts := metav1.CreateOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return client.CoreV1().Pods(namespace).Create(ctx, pod, opts)
}

func injected(pod *corev1.Pod) bool {
	return pod.Annotations[webhook.StatusAnnotation] != ""
}

// poll retries cond until it holds: webhook configurations take effect
// asynchronously.
func poll(t *testing.T, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 30*time.Second, true, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestWebhooksKube(t *testing.T) {
	c := kube.Start(t)
	certs := newTestCertificates(t)
	injector := newInjector(t, webhook.InjectorConfig{Version: "test"})
	validator, err := webhook.NewValidator(webhook.ValidatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	url := startServer(t, certs, injector, validator)
	webhookConfigurations(t, c.Client, url)

	ctx, cancel := context.WithCancel(t.Context())
	kept := make(chan error, 1)
	go func() {
		kept <- webhook.KeepCABundle(ctx, webhook.KeepConfig{Client: c.Client, CABundle: func() []byte { return certs.caPEM }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-kept; err != nil {
			t.Errorf("KeepCABundle: %v", err)
		}
	})

	for name, labels := range map[string]map[string]string{
		"mesh":  {webhook.NamespaceLabel: webhook.NamespaceLabelEnabled},
		"plain": nil,
	} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if _, err := c.Client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The injector is in force once KeepCABundle has written the caBundle and the
	// API server has read the configuration.
	poll(t, "waiting for the injector", func(ctx context.Context) (bool, error) {
		pod, err := createPod(ctx, c.Client, "mesh", testPod(nil), true)
		return err == nil && injected(pod), nil
	})

	t.Run("labelled namespace: injected", func(t *testing.T) {
		pod, err := createPod(t.Context(), c.Client, "mesh", testPod(nil), false)
		if err != nil {
			t.Fatal(err)
		}
		if got := containerNames(pod.Spec.InitContainers); !slices.Equal(got, []string{"palisade-init", "palisade-agent", "palisade-proxy"}) {
			t.Errorf("init containers %v", got)
		}
		if got := volumeNames(pod.Spec.Volumes); !slices.Contains(got, "palisade-token") {
			t.Errorf("volumes %v", got)
		}
		if !injected(pod) {
			t.Errorf("no status annotation: %v", pod.Annotations)
		}

		// The injected pod's spec created again, as a copy of it would be, with and
		// without the status annotation: never a second sidecar.
		for _, annotations := range []map[string]string{pod.Annotations, nil} {
			again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "copy-", Annotations: annotations}, Spec: pod.Spec}
			created, err := createPod(t.Context(), c.Client, "mesh", again, false)
			if err != nil {
				t.Fatal(err)
			}
			if got := containerNames(created.Spec.InitContainers); len(got) != 3 {
				t.Errorf("init containers %v: injected twice", got)
			}
		}
	})

	t.Run("unlabelled namespace: untouched", func(t *testing.T) {
		pod, err := createPod(t.Context(), c.Client, "plain", testPod(nil), false)
		if err != nil {
			t.Fatal(err)
		}
		if injected(pod) || len(pod.Spec.InitContainers) > 0 {
			t.Errorf("pod injected outside the mesh: %v", containerNames(pod.Spec.InitContainers))
		}
	})

	t.Run("opted out: untouched", func(t *testing.T) {
		pod, err := createPod(t.Context(), c.Client, "mesh", testPod(map[string]string{webhook.InjectKey: "false"}), false)
		if err != nil {
			t.Fatal(err)
		}
		if injected(pod) || len(pod.Spec.InitContainers) > 0 {
			t.Errorf("an opted-out pod was injected: %v", containerNames(pod.Spec.InitContainers))
		}
	})

	t.Run("validation", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(kube.RepoRoot(), "deploy", "crds")); err != nil {
			t.Skip("no CRDs in deploy/crds yet:", err)
		}
		c.ApplyCRDs(t)
		apply := func(doc string) (string, error) { return c.Kubectl(t, doc, "apply", "-n", "mesh", "-f", "-") }
		poll(t, "waiting for the validator", func(context.Context) (bool, error) {
			out, err := apply(invalidVirtualService)
			return err != nil && strings.Contains(out, validateWebhookName), nil
		})
		tests := []struct {
			name string
			doc  string
			want string // in kubectl's output; refused unless ""
		}{
			{"invalid VirtualService", invalidVirtualService,
				`error when creating "STDIN": admission webhook "validate.palisade.dev" denied the request: VirtualService mesh/reviews is invalid: spec.http[0].route[0].destination.host: "Not_A_Host!" is not a valid host name`},
			{"invalid Rego", invalidRegoPolicy,
				`error when creating "STDIN": admission webhook "validate.palisade.dev" denied the request: RegoPolicy mesh/reviews is invalid: spec.rego: line 3, column 50: rego_parse_error: unexpected equal token`},
			{"valid VirtualService", validVirtualService, ""},
			{"update making it invalid", invalidVirtualService,
				`admission webhook "validate.palisade.dev" denied the request: VirtualService mesh/reviews is invalid: spec.http[0].route[0].destination.host`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, err := apply(tt.doc)
				switch {
				case tt.want == "" && err != nil:
					t.Errorf("refused: %v\n%s", err, out)
				case tt.want != "" && (err == nil || !strings.Contains(out, tt.want)):
					t.Errorf("kubectl apply: %v\n%s\nwant refused with %q", err, out, tt.want)
				}
			})
		}
	})

	// Last: it points the injector's configuration at a port where nothing listens.
	t.Run("failure policy", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadURL := "https://" + l.Addr().String() + webhook.InjectPath
		l.Close()
		setInjector := func(policy admissionregistrationv1.FailurePolicyType) {
			t.Helper()
			mutating := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cfg, err := mutating.Get(t.Context(), webhook.MutatingConfigurationName, metav1.GetOptions{})
				if err != nil {
					return err
				}
				cfg.Webhooks[0].ClientConfig.URL = &deadURL
				cfg.Webhooks[0].FailurePolicy = &policy
				_, err = mutating.Update(t.Context(), cfg, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}

		setInjector(admissionregistrationv1.Fail)
		var refusal error
		poll(t, "waiting for pods to be refused", func(ctx context.Context) (bool, error) {
			_, refusal = createPod(ctx, c.Client, "mesh", testPod(nil), true)
			return refusal != nil, nil
		})
		if msg := refusal.Error(); !strings.Contains(msg, `failed calling webhook "`+injectWebhookName+`"`) || !strings.Contains(msg, "connection refused") {
			t.Errorf("refusal %q does not say that the injector could not be reached", msg)
		}
		if _, err := createPod(t.Context(), c.Client, "plain", testPod(nil), false); err != nil {
			t.Errorf("outside injected namespaces pods are not affected, but: %v", err)
		}

		setInjector(admissionregistrationv1.Ignore)
		var pod *corev1.Pod
		poll(t, "waiting for pods to be let through", func(ctx context.Context) (bool, error) {
			pod, err = createPod(ctx, c.Client, "mesh", testPod(nil), false)
			return err == nil, nil
		})
		if injected(pod) || len(pod.Spec.InitContainers) > 0 {
			t.Errorf("pod injected with the injector down: %v", containerNames(pod.Spec.InitContainers))
		}
	})
}
