package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// ValidatorConfig configures a Validator.
type ValidatorConfig struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Validator is the validation webhook, an http.Handler of admission.k8s.io/v1
// AdmissionReviews of the configuration kinds Palisade reads. It refuses a created
// or updated object that mesh/config does not accept, with the same messages that
// palisadectl analyze and the config sources give (each naming the field, e.g.
// "spec.http[0].route[0].destination.host: ..."), so that a mistake is caught at
// kubectl apply instead of surfacing later in the object's status.
//
// Deletions, objects being deleted (so that finalizers can always be removed),
// subresources and groups that Palisade does not read are allowed unexamined. A
// kind of Palisade's groups that it does not read (an Istio Gateway, say) is allowed
// with a warning saying so.
type Validator struct {
	log     *slog.Logger
	results map[string]prometheus.Counter
}

// Results of a validation request, the values of the metric's result label.
const (
	resultAllowed = "allowed"
	resultWarned  = "warned"
	resultDenied  = "denied"
)

// palisadeGroups are the API groups of the kinds Palisade reads.
var palisadeGroups = map[string]bool{config.NetworkingGroup: true, config.SecurityGroup: true, config.PolicyGroup: true}

// NewValidator returns a Validator.
func NewValidator(cfg ValidatorConfig) (*Validator, error) {
	v := &Validator{log: cfg.Logger, results: map[string]prometheus.Counter{}}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	validations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_webhook_validations_total",
		Help: "Configuration objects examined by the validation webhook, by result: allowed, warned (allowed with warnings) or denied.",
	}, []string{"result"})
	for _, r := range []string{resultAllowed, resultWarned, resultDenied} {
		v.results[r] = validations.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(validations); err != nil {
			return nil, fmt.Errorf("validator metrics: %w", err)
		}
	}
	return v, nil
}

// ServeHTTP answers an AdmissionReview.
func (v *Validator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveReview(w, r, v.log, v.decide)
}

func (v *Validator) decide(_ context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if (req.Operation != admissionv1.Create && req.Operation != admissionv1.Update) ||
		req.SubResource != "" || !palisadeGroups[req.Kind.Group] {
		return allowed()
	}
	doc, deleting, err := withNamespace(req.Object.Raw, req.Namespace)
	switch {
	case err != nil:
		v.results[resultDenied].Inc()
		return denied(&metav1.Status{Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest, Message: err.Error()})
	case deleting:
		return allowed()
	}
	_, diags := config.Decode("", doc)
	var errs, warnings []string
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			// One line per problem: a diagnostic lists its problems one a line.
			errs = append(errs, strings.Split(d.Message, "\n")...)
		} else {
			warnings = append(warnings, d.Message)
		}
	}
	key := config.Key{Kind: config.Kind(req.Kind.Kind), Namespace: req.Namespace, Name: req.Name}
	if len(errs) > 0 {
		v.results[resultDenied].Inc()
		v.log.Info("configuration refused", "object", key.String(), "user", req.UserInfo.Username, "errors", errs)
		// No Details: given them without Causes, kubectl prints "The VirtualService
		// "x" is invalid" and drops the message; without them it prints the
		// message, which the API server prefixes with the webhook's name.
		return denied(&metav1.Status{
			Code:    http.StatusUnprocessableEntity,
			Reason:  metav1.StatusReasonInvalid,
			Message: fmt.Sprintf("%s is invalid: %s", key, strings.Join(errs, "; ")),
		})
	}
	if len(warnings) > 0 {
		v.results[resultWarned].Inc()
		return &admissionv1.AdmissionResponse{Allowed: true, Warnings: warnings}
	}
	v.results[resultAllowed].Inc()
	return allowed()
}

// withNamespace returns the object's JSON with metadata.namespace set to the
// request's namespace, which the object may lack (a client need not repeat it), and
// whether the object is being deleted. The spec and other fields are left byte for
// byte as they came.
func withNamespace(raw []byte, namespace string) ([]byte, bool, error) {
	var obj map[string]json.RawMessage
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &obj); err != nil {
		return nil, false, fmt.Errorf("decoding the object: %w", err)
	}
	var meta map[string]json.RawMessage
	if m := obj["metadata"]; len(m) > 0 {
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(m, &meta); err != nil {
			return nil, false, fmt.Errorf("decoding the object's metadata: %w", err)
		}
	}
	if meta == nil {
		meta = map[string]json.RawMessage{}
	}
	if ts := meta["deletionTimestamp"]; len(ts) > 0 && string(ts) != "null" {
		return nil, true, nil
	}
	if namespace != "" {
		meta["namespace"], _ = json.Marshal(namespace)
	}
	obj["metadata"], _ = json.Marshal(meta)
	doc, err := json.Marshal(obj)
	return doc, false, err
}
