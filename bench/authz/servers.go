package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"github.com/palisade-mesh/palisade/authz"
)

// The two ext_authz servers this program runs as processes of its own (-serve
// floor|opa-envoy); the third is palisaded itself.

// serve runs a server of kind on addr until killed.
func serve(kind, configDir, addr string) error {
	var s authv3.AuthorizationServer
	switch kind {
	case "floor":
		s = floorServer{}
	case "opa-envoy":
		o, err := newOPAEnvoy(context.Background(), configDir)
		if err != nil {
			return err
		}
		s = o
	default:
		return fmt.Errorf("unknown server %q", kind)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	authv3.RegisterAuthorizationServer(g, s)
	return g.Serve(l)
}

// floorServer allows every request without looking at it: what gRPC and the
// CheckRequest's decoding cost alone.
type floorServer struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{
	Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

func (floorServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// opaEnvoy decides as OPA-Envoy does, the straightforward way: the CheckRequest
// through protojson into a generic map (authz.InputViaJSON), a query prepared
// from the modules and a store of the data, evaluated with that map as input. The
// modules and data are Palisade's for the same config directory (authz.Policy).
type opaEnvoy struct {
	authv3.UnimplementedAuthorizationServer
	query rego.PreparedEvalQuery
}

func newOPAEnvoy(ctx context.Context, configDir string) (*opaEnvoy, error) {
	snap, err := loadSnapshot(configDir)
	if err != nil {
		return nil, err
	}
	policy, diags := authz.Policy(snap, nil)
	if len(diags) > 0 {
		return nil, fmt.Errorf("policy: %v", diags)
	}
	q, err := prepareStraightforward(ctx, policy.Modules, policy.Data)
	if err != nil {
		return nil, err
	}
	return &opaEnvoy{query: q}, nil
}

// prepareStraightforward prepares the decision query as an OPA-Envoy user's code
// would: rego.New with each module and an in-memory store of the data.
func prepareStraightforward(ctx context.Context, modules map[string]string, data map[string]any) (rego.PreparedEvalQuery, error) {
	opts := []func(*rego.Rego){rego.Query(authz.DecisionQuery), rego.Store(inmem.NewFromObject(data))}
	for _, name := range slices.Sorted(maps.Keys(modules)) {
		opts = append(opts, rego.Module(name, modules[name]))
	}
	return rego.New(opts...).PrepareForEval(ctx)
}

// opaEnvoyInput is OPA-Envoy's input for req, plus the one object of Palisade's
// own that the mesh library needs, input.palisade.workload, which
// authz.InputViaJSON does not make (see addWorkload).
func opaEnvoyInput(req *authv3.CheckRequest) (map[string]any, error) {
	input, err := authz.InputViaJSON(req)
	if err != nil {
		return nil, err
	}
	addWorkload(input, req)
	return input, nil
}

// addWorkload adds input.palisade.workload from the context extensions, as
// authz.Input does: the mesh library selects policies by it, and without it every
// decision is the default denial. A stock OPA-Envoy would have to do the same.
func addWorkload(input map[string]any, req *authv3.CheckRequest) {
	ext := req.GetAttributes().GetContextExtensions()
	ns, ok := ext[authz.ExtensionWorkloadNamespace]
	if !ok {
		if _, rest, found := strings.Cut(req.GetAttributes().GetDestination().GetPrincipal(), "/ns/"); found {
			ns, _, _ = strings.Cut(rest, "/")
		}
	}
	labels := map[string]any{}
	for pair := range strings.SplitSeq(ext[authz.ExtensionWorkloadLabels], ",") {
		if k, v, ok := strings.Cut(pair, "="); ok && k != "" {
			labels[k] = v
		}
	}
	input["palisade"] = map[string]any{"workload": map[string]any{"namespace": ns, "labels": labels}}
}

func (o *opaEnvoy) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	input, err := opaEnvoyInput(req)
	if err != nil {
		return denied(http.StatusBadRequest, err.Error()), nil
	}
	rs, err := o.query.Eval(ctx, rego.EvalInput(input))
	switch {
	case err != nil:
		return denied(http.StatusForbidden, err.Error()), nil
	case len(rs) == 0 || len(rs[0].Expressions) == 0:
		return denied(http.StatusForbidden, "the decision is undefined"), nil
	}
	return decisionResponse(rs[0].Expressions[0].Value), nil
}

// decisionResponse makes Envoy's answer from a decision as OPA-Envoy reads it: a
// boolean, or an object with allowed, http_status, headers, body,
// response_headers_to_add and request_headers_to_remove.
func decisionResponse(v any) *authv3.CheckResponse {
	if b, ok := v.(bool); ok {
		if b {
			return okResponse
		}
		return denied(http.StatusForbidden, "")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return denied(http.StatusForbidden, fmt.Sprintf("decision is a %T", v))
	}
	reason, _ := m["reason"].(string)
	if allowed, _ := m["allowed"].(bool); allowed {
		ok := &authv3.OkHttpResponse{Headers: headerOptions(m["headers"]), ResponseHeadersToAdd: headerOptions(m["response_headers_to_add"])}
		if rm, _ := m["request_headers_to_remove"].([]any); len(rm) > 0 {
			for _, h := range rm {
				if s, ok2 := h.(string); ok2 {
					ok.HeadersToRemove = append(ok.HeadersToRemove, s)
				}
			}
		}
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok}}
	}
	status := http.StatusForbidden
	switch n := m["http_status"].(type) {
	case json.Number:
		if i, err := n.Int64(); err == nil {
			status = int(i)
		}
	case float64:
		status = int(n)
	}
	r := denied(status, reason)
	d := r.GetDeniedResponse()
	d.Headers = headerOptions(m["headers"])
	d.Body, _ = m["body"].(string)
	return r
}

func denied(status int, reason string) *authv3.CheckResponse {
	c := code.Code_PERMISSION_DENIED
	if status == http.StatusUnauthorized {
		c = code.Code_UNAUTHENTICATED
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(c), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(status)},
		}},
	}
}

func headerOptions(v any) []*corev3.HeaderValueOption {
	m, _ := v.(map[string]any)
	var out []*corev3.HeaderValueOption
	for _, name := range slices.Sorted(maps.Keys(m)) {
		values := []any{m[name]}
		if list, ok := m[name].([]any); ok {
			values = list
		}
		for _, x := range values {
			if s, ok := x.(string); ok {
				out = append(out, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: strings.ToLower(name), Value: s}})
			}
		}
	}
	return out
}

// decisionOf reads a CheckResponse: allowed, and the HTTP status Envoy answers with.
func decisionOf(r *authv3.CheckResponse) (allowed bool, status int) {
	if r.GetStatus().GetCode() == int32(code.Code_OK) {
		return true, http.StatusOK
	}
	if s := int(r.GetDeniedResponse().GetStatus().GetCode()); s != 0 {
		return false, s
	}
	return false, http.StatusForbidden
}
