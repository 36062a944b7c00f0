package webhook_test

import (
	"encoding/json"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	sigsjson "sigs.k8s.io/json"

	"github.com/palisade-mesh/palisade/webhook"
)

// FuzzAdmission sends arbitrary objects, as users can create them, through both
// webhooks. Each answers a well-formed AdmissionReview (review checks it); an
// injection patch applies to the pod, yields a pod with one agent, and injecting
// that pod again changes nothing.
func FuzzAdmission(f *testing.F) {
	for _, seed := range []string{
		`{"metadata":{"name":"web"},"spec":{"containers":[{"name":"app","image":"x"}]}}`,
		`{"metadata":{"generateName":"web-","annotations":{"traffic.sidecar.istio.io/excludeInboundPorts":"80,\"x"}},"spec":{"containers":[{"name":"app"}],"volumes":[{"name":"v","emptyDir":{}}]}}`,
		`{"metadata":{"labels":{"sidecar.palisade.dev/inject":"false"}},"spec":{"containers":[]}}`,
		`{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"r"},"spec":{"hosts":["r"],"http":[{"route":[{"destination":{"host":"r"}}]}]}}`,
		`{"apiVersion":"policy.palisade.dev/v1alpha1","kind":"RegoPolicy","metadata":{"name":"p"},"spec":{"rego":"package x\nallow if {"}}`,
		`null`, `[]`, `{"spec":7}`,
	} {
		f.Add([]byte(seed))
	}
	injector := newInjector(f, webhook.InjectorConfig{})
	validator, err := webhook.NewValidator(webhook.ValidatorConfig{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, object []byte) {
		if !json.Valid(object) {
			return // the API server sends JSON; bodies that are not are TestBadReviews'
		}
		for _, kind := range []metav1.GroupVersionKind{
			{Group: "networking.istio.io", Version: "v1", Kind: "VirtualService"},
			{Group: "policy.palisade.dev", Version: "v1alpha1", Kind: "RegoPolicy"},
		} {
			review(t, validator, admissionv1.AdmissionRequest{Kind: kind, Namespace: "default", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: object}})
		}
		resp := review(t, injector, podCreation("shop", object))
		if !resp.Allowed || resp.Patch == nil {
			return
		}
		patch, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("the patch does not decode: %v\n%s", err, resp.Patch)
		}
		patched, err := patch.Apply(object)
		if err != nil {
			t.Fatalf("the patch does not apply to the pod: %v\npod: %s\npatch: %s", err, object, resp.Patch)
		}
		var pod corev1.Pod
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(patched, &pod); err != nil { // as the API server reads it
			t.Fatalf("the injected pod does not decode: %v\n%s", err, patched)
		}
		agents := 0
		for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
			if c.Name == webhook.AgentContainerName {
				agents++
			}
		}
		if agents != 1 {
			t.Fatalf("the injected pod has %d agents:\n%s", agents, patched)
		}
		if again := review(t, injector, podCreation("shop", patched)); again.Patch != nil {
			t.Fatalf("an injected pod was patched again: %s", again.Patch)
		}
	})
}
