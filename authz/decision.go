package authz

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// Decision is the result of data.palisade.mesh.decision (see policies/README.md), or
// of a failure to get one.
type Decision struct {
	Allowed    bool
	HTTPStatus int
	// Headers are added to the request upstream when allowed, to the response when
	// denied.
	Headers                []Header
	ResponseHeadersToAdd   []Header
	RequestHeadersToRemove []string
	Body                   string
	Reason                 string
	// Reasons lists every policy and rule that decided, as the policy reports them.
	Reasons []any
	// Failure is set when no policy decision was made and the request is denied
	// for that: it names the cause, and is the metric's reason label.
	Failure Failure
}

// Header is one header to add; a name may repeat.
type Header struct{ Name, Value string }

// Failure says why a request was denied without a policy decision.
type Failure string

// The failures, also used as metric labels.
const (
	FailureNone      Failure = ""
	FailureNoPolicy  Failure = "no_policy"
	FailureEval      Failure = "eval_error"
	FailureUndefined Failure = "undefined"
	FailureBadResult Failure = "bad_result"
)

// failed is the decision for a request no policy decided: deny, as the mesh fails
// closed.
func failed(f Failure, reason string) Decision {
	return Decision{HTTPStatus: http.StatusForbidden, Reason: reason, Failure: f}
}

// parseDecision reads a decision as OPA-Envoy does: a boolean, or an object with
// "allowed" and the optional response fields.
func parseDecision(v any) (Decision, error) {
	switch v := v.(type) {
	case bool:
		d := Decision{Allowed: v, HTTPStatus: http.StatusOK}
		if !v {
			d.HTTPStatus = http.StatusForbidden
		}
		return d, nil
	case map[string]any:
		return parseDecisionObject(v)
	}
	return Decision{}, fmt.Errorf("decision is a %T, want a boolean or an object", v)
}

func parseDecisionObject(m map[string]any) (Decision, error) {
	allowed, ok := m["allowed"].(bool)
	if !ok {
		return Decision{}, fmt.Errorf(`decision object has no boolean "allowed"`)
	}
	d := Decision{Allowed: allowed, HTTPStatus: http.StatusOK}
	if !allowed {
		d.HTTPStatus = http.StatusForbidden
	}
	if s, ok := m["http_status"]; ok {
		n, err := statusCode(s)
		if err != nil {
			return Decision{}, err
		}
		d.HTTPStatus = n
	}
	var err error
	if d.Headers, err = headers(m["headers"], "headers"); err != nil {
		return Decision{}, err
	}
	if d.ResponseHeadersToAdd, err = headers(m["response_headers_to_add"], "response_headers_to_add"); err != nil {
		return Decision{}, err
	}
	if rm, ok := m["request_headers_to_remove"].([]any); ok {
		for _, x := range rm {
			s, ok := x.(string)
			if !ok {
				return Decision{}, fmt.Errorf("request_headers_to_remove: %v is not a string", x)
			}
			d.RequestHeadersToRemove = append(d.RequestHeadersToRemove, s)
		}
	}
	if b, ok := m["body"]; ok {
		s, ok := b.(string)
		if !ok {
			return Decision{}, fmt.Errorf("body is a %T, want a string", b)
		}
		d.Body = s
	}
	d.Reason, _ = m["reason"].(string)
	d.Reasons, _ = m["reasons"].([]any)
	return d, nil
}

func statusCode(v any) (int, error) {
	var n int64
	switch v := v.(type) {
	case json.Number:
		i, err := v.Int64()
		if err != nil {
			return 0, fmt.Errorf("http_status %s is not an integer", v)
		}
		n = i
	case float64:
		n = int64(v)
	default:
		return 0, fmt.Errorf("http_status is a %T, want a number", v)
	}
	if n < 100 || n > 599 {
		return 0, fmt.Errorf("http_status %d is not an HTTP status", n)
	}
	return int(n), nil
}

// headers reads OPA-Envoy's header objects: name → string or list of strings.
func headers(v any, field string) ([]Header, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s is a %T, want an object", field, v)
	}
	var hs []Header
	for _, name := range slices.Sorted(maps.Keys(m)) {
		switch val := m[name].(type) {
		case string:
			hs = append(hs, Header{name, val})
		case []any:
			for _, x := range val {
				s, ok := x.(string)
				if !ok {
					return nil, fmt.Errorf("%s[%s]: %v is not a string", field, name, x)
				}
				hs = append(hs, Header{name, s})
			}
		default:
			return nil, fmt.Errorf("%s[%s] is a %T, want a string or a list of strings", field, name, val)
		}
	}
	return hs, nil
}

// response is the CheckResponse Envoy acts on.
func (d Decision) response() *authv3.CheckResponse {
	if d.Allowed {
		ok := &authv3.OkHttpResponse{
			Headers:              headerOptions(d.Headers),
			HeadersToRemove:      d.RequestHeadersToRemove,
			ResponseHeadersToAdd: headerOptions(d.ResponseHeadersToAdd),
		}
		return &authv3.CheckResponse{
			Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		}
	}
	c := code.Code_PERMISSION_DENIED
	if d.HTTPStatus == http.StatusUnauthorized {
		c = code.Code_UNAUTHENTICATED
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(c), Message: d.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(d.HTTPStatus)},
			Headers: headerOptions(d.Headers),
			Body:    d.Body,
		}},
	}
}

func headerOptions(hs []Header) []*corev3.HeaderValueOption {
	if len(hs) == 0 {
		return nil
	}
	out := make([]*corev3.HeaderValueOption, len(hs))
	for i, h := range hs {
		// A header's first value replaces what the request has; more values of the
		// same name (they are sorted together) are appended to it.
		action := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		if i > 0 && strings.EqualFold(hs[i-1].Name, h.Name) {
			action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		}
		out[i] = &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(h.Name), Value: h.Value},
			AppendAction: action,
		}
	}
	return out
}
