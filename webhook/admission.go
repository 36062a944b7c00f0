package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
)

// maxReviewBytes bounds an AdmissionReview body. It holds at most an object and its
// old version, each at most 3 MiB as the API server accepts them (twice etcd's 1.5
// MiB, for JSON), plus the review's own fields: controller-runtime's reasoning.
const maxReviewBytes = 7 << 20

// decideFunc answers one admission request; its response's UID is set by
// serveReview.
type decideFunc func(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse

// serveReview reads an admission.k8s.io/v1 AdmissionReview, decides its request and
// writes the review back with the response. A body that is not such a review gets
// HTTP 400 (405, 413, 415 where those say it better) with a plain-text message: the
// API server then applies the webhook's failurePolicy.
func serveReview(w http.ResponseWriter, r *http.Request, log *slog.Logger, decide decideFunc) {
	review, status, err := readReview(w, r)
	if err != nil {
		log.Warn("bad admission request", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
		http.Error(w, err.Error(), status)
		return
	}
	resp := decide(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil { // not expected: the response is plain data
		http.Error(w, fmt.Sprintf("encoding the admission response: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// readReview decodes the request's AdmissionReview; on error it also returns the
// HTTP status to answer with.
func readReview(w http.ResponseWriter, r *http.Request) (*admissionv1.AdmissionReview, int, error) {
	if r.Method != http.MethodPost {
		return nil, http.StatusMethodNotAllowed, fmt.Errorf("method %s: an AdmissionReview is POSTed", r.Method)
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: an AdmissionReview is application/json", r.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("the AdmissionReview is larger than %d bytes", maxReviewBytes)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the AdmissionReview: %w", err)
	}
	var review admissionv1.AdmissionReview
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(body, &review); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("decoding the AdmissionReview: %w", err)
	}
	if gvk := review.GroupVersionKind(); gvk != admissionv1.SchemeGroupVersion.WithKind("AdmissionReview") {
		return nil, http.StatusBadRequest, fmt.Errorf("got apiVersion %q kind %q: only admission.k8s.io/v1 AdmissionReview is served (admissionReviewVersions: [v1])", review.APIVersion, review.Kind)
	}
	if review.Request == nil || review.Request.UID == "" {
		return nil, http.StatusBadRequest, errors.New("the AdmissionReview has no request with a uid")
	}
	return &review, 0, nil
}

func allowed() *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: true}
}

// denied refuses a request; status is what the API server returns to the client,
// its message prefixed with the webhook's name.
func denied(status *metav1.Status) *admissionv1.AdmissionResponse {
	status.Status = metav1.StatusFailure
	return &admissionv1.AdmissionResponse{Allowed: false, Result: status}
}
