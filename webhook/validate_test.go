package webhook_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/webhook"
)

// The objects carry no namespace, as kubectl sends them when the namespace comes
// from the context: the request's namespace is used.
const (
	validVirtualService = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
`
	invalidVirtualService = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: "Not_A_Host!"}
`
	invalidRegoPolicy = `apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: reviews}
spec:
  rego: |
    package reviews

    allow if input.attributes.request.http.method == == "GET"
`
	istioGateway = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
`
	deployment = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: "not validated here"}
`
)

// admissionOf builds the request the API server sends for a YAML object.
func admissionOf(t *testing.T, op admissionv1.Operation, doc string) admissionv1.AdmissionRequest {
	t.Helper()
	raw, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var meta metav1.PartialObjectMetadata
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	gv, err := schema.ParseGroupVersion(meta.APIVersion)
	if err != nil {
		t.Fatal(err)
	}
	req := admissionv1.AdmissionRequest{
		Kind:      metav1.GroupVersionKind{Group: gv.Group, Version: gv.Version, Kind: meta.Kind},
		Namespace: "shop",
		Name:      meta.Name,
		Operation: op,
	}
	if op == admissionv1.Delete {
		req.OldObject = runtime.RawExtension{Raw: raw}
	} else {
		req.Object = runtime.RawExtension{Raw: raw}
	}
	return req
}

func TestValidator(t *testing.T) {
	beingDeleted := strings.Replace(invalidVirtualService, "metadata: {name: reviews}", "metadata: {name: reviews, deletionTimestamp: \"2026-01-01T00:00:00Z\", finalizers: [x]}", 1)
	tests := []struct {
		name         string
		op           admissionv1.Operation
		subresource  string
		doc          string
		wantAllowed  bool
		wantMessage  []string // in the refusal
		wantWarnings string   // in the one warning
		wantResult   string   // the metric's result, "" for none counted
	}{
		{"valid VirtualService", admissionv1.Create, "", validVirtualService, true, nil, "", "allowed"},
		{"invalid VirtualService", admissionv1.Create, "", invalidVirtualService, false,
			[]string{`VirtualService shop/reviews is invalid: spec.http[0].route[0].destination.host: "Not_A_Host!" is not a valid host name`}, "", "denied"},
		{"invalid VirtualService update", admissionv1.Update, "", invalidVirtualService, false, []string{"spec.http[0].route[0].destination.host"}, "", "denied"},
		{"two errors", admissionv1.Create, "", strings.Replace(invalidVirtualService, "hosts: [reviews]", "hosts: [reviews, \"a b\"]", 1), false,
			[]string{`spec.hosts[1]: "a b" is not a valid host name; spec.http[0].route[0].destination.host`}, "", "denied"},
		{"invalid Rego", admissionv1.Create, "", invalidRegoPolicy, false,
			[]string{"RegoPolicy shop/reviews is invalid: spec.rego: line 3, column 50: rego_parse_error: unexpected equal token"}, "", "denied"},
		{"unsupported version", admissionv1.Create, "", strings.Replace(validVirtualService, "networking.istio.io/v1", "networking.istio.io/v2", 1), false,
			[]string{"unsupported apiVersion networking.istio.io/v2"}, "", "denied"},
		{"kind of an Istio group Palisade does not read", admissionv1.Create, "", istioGateway, true, nil, "kind Gateway in networking.istio.io/v1 is not read by Palisade", "warned"},
		{"group Palisade does not read", admissionv1.Create, "", deployment, true, nil, "", ""},
		{"delete", admissionv1.Delete, "", invalidVirtualService, true, nil, "", ""},
		{"being deleted", admissionv1.Update, "", beingDeleted, true, nil, "", ""},
		{"status", admissionv1.Update, "status", invalidVirtualService, true, nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			v, err := webhook.NewValidator(webhook.ValidatorConfig{Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			req := admissionOf(t, tt.op, tt.doc)
			req.SubResource = tt.subresource
			resp := review(t, v, req)
			if resp.Allowed != tt.wantAllowed {
				t.Fatalf("allowed %v, want %v; result %+v", resp.Allowed, tt.wantAllowed, resp.Result)
			}
			if !resp.Allowed {
				r := resp.Result
				if r == nil || r.Code != http.StatusUnprocessableEntity {
					t.Fatalf("result %+v, want a 422 Invalid status", r)
				}
				if r.Reason != metav1.StatusReasonInvalid {
					t.Errorf("result %+v, want reason Invalid", r)
				}
				for _, want := range tt.wantMessage {
					if !strings.Contains(r.Message, want) {
						t.Errorf("message %q lacks %q", r.Message, want)
					}
				}
			}
			if tt.wantWarnings == "" && len(resp.Warnings) > 0 ||
				tt.wantWarnings != "" && (len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], tt.wantWarnings)) {
				t.Errorf("warnings %q, want %q", resp.Warnings, tt.wantWarnings)
			}
			counts := countsByResult(t, reg, "palisade_webhook_validations_total")
			for result, n := range counts {
				if want := float64(btoi(result == tt.wantResult)); n != want {
					t.Errorf("count of %s: %v, want %v", result, n, want)
				}
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestValidatorUsesRequestNamespace checks that the object is validated in the
// request's namespace, not in "default" for want of one in the object.
func TestValidatorUsesRequestNamespace(t *testing.T) {
	v, err := webhook.NewValidator(webhook.ValidatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	req := admissionOf(t, admissionv1.Create, invalidVirtualService)
	req.Namespace = "Not-A-Namespace"
	resp := review(t, v, req)
	if resp.Allowed || !strings.Contains(resp.Result.Message, `metadata.namespace "Not-A-Namespace" is not a valid namespace name`) {
		t.Errorf("allowed %v, result %+v: want the request's namespace validated", resp.Allowed, resp.Result)
	}
}
