package webhook_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-mesh/palisade/webhook"
)

const testUID = types.UID("0d9e5f4a-7c1b-4c53-9a57-5e0f3f4f2a11")

var typeMetaReview = metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}

// review sends req to h as the API server does and returns the response, after
// checking that it is a well-formed AdmissionReview answering req.
func review(t testing.TB, h http.Handler, req admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	t.Helper()
	req.UID = testUID
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: typeMetaReview,
		Request:  &req,
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := post(h, "application/json", body)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, rec.Body)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("malformed AdmissionReview: %s", rec.Body)
	}
	if out.Response.UID != testUID {
		t.Errorf("response uid %q, want the request's %q", out.Response.UID, testUID)
	}
	return out.Response
}

func post(h http.Handler, contentType string, body []byte) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	r.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// TestBadReviews checks that both handlers answer a request that is not an
// AdmissionReview with an HTTP error and a message, never a panic.
func TestBadReviews(t *testing.T) {
	injector := newInjector(t, webhook.InjectorConfig{})
	validator, err := webhook.NewValidator(webhook.ValidatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		wantCode    int
		wantMessage string
	}{
		{"GET", http.MethodGet, "application/json", "", http.StatusMethodNotAllowed, "POST"},
		{"YAML", http.MethodPost, "application/yaml", "{}", http.StatusUnsupportedMediaType, "application/json"},
		{"not JSON", http.MethodPost, "application/json", "{", http.StatusBadRequest, "decoding the AdmissionReview"},
		{"JSON of the wrong shape", http.MethodPost, "application/json", `{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}`, http.StatusBadRequest, "decoding the AdmissionReview"},
		{"v1beta1", http.MethodPost, "application/json; charset=utf-8", `{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}`, http.StatusBadRequest, "only admission.k8s.io/v1"},
		{"no request", http.MethodPost, "application/json", `{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}`, http.StatusBadRequest, "no request"},
		{"no uid", http.MethodPost, "application/json", `{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}`, http.StatusBadRequest, "no request with a uid"},
		{"too large", http.MethodPost, "application/json", `{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "` + strings.Repeat("x", 8<<20) + `"}}`, http.StatusRequestEntityTooLarge, "larger than"},
	}
	for _, h := range []struct {
		name    string
		handler http.Handler
	}{{"injector", injector}, {"validator", validator}} {
		for _, tt := range tests {
			t.Run(h.name+"/"+tt.name, func(t *testing.T) {
				r := httptest.NewRequest(tt.method, "/", strings.NewReader(tt.body))
				r.Header.Set("Content-Type", tt.contentType)
				rec := httptest.NewRecorder()
				h.handler.ServeHTTP(rec, r)
				if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantMessage) {
					t.Errorf("HTTP %d %q, want %d with %q", rec.Code, rec.Body, tt.wantCode, tt.wantMessage)
				}
			})
		}
	}
}
