package authz

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/palisade-mesh/palisade/mesh"
)

// ExplainRequest describes a request to explain, as `palisadectl authz explain`
// takes it on the command line.
type ExplainRequest struct {
	From    string            `json:"from,omitempty"` // the caller's SPIFFE ID; empty for plaintext
	To      string            `json:"to"`             // HOST or HOST:PORT of a service of the mesh
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	JWT     string            `json:"jwt,omitempty"` // sent as "authorization: Bearer JWT"
}

// Explanation is the decision for an ExplainRequest and every policy and rule that
// made it: what the decision log records for a real request.
type Explanation struct {
	Allowed    bool              `json:"allowed"`
	HTTPStatus int               `json:"http_status"`
	Reason     string            `json:"reason,omitempty"`
	Reasons    []any             `json:"reasons,omitempty"`
	Failure    string            `json:"failure,omitempty"`
	Revision   string            `json:"revision,omitempty"`
	Service    string            `json:"service"`
	Port       uint32            `json:"port"`
	Namespace  string            `json:"namespace"`
	Labels     map[string]string `json:"labels"`
}

// ErrUnknownService is returned when an ExplainRequest's To names no service.
var ErrUnknownService = errors.New("no service of the mesh has that host")

// Explain decides a described request against the policy in force. The request
// goes to the service named by To: to its first endpoint's workload (namespace,
// labels and service account), on the port given or the service's first port.
func (s *Server) Explain(ctx context.Context, snap *mesh.Snapshot, trustDomain string, r ExplainRequest) (Explanation, error) {
	host, port, err := splitHostPort(r.To)
	if err != nil {
		return Explanation{}, err
	}
	svc := findService(snap, host)
	if svc == nil {
		return Explanation{}, fmt.Errorf("%w: %q", ErrUnknownService, host)
	}
	if port == 0 && len(svc.Ports) > 0 {
		port = svc.Ports[0].Number
	}
	labels, sa := map[string]string{}, ""
	if len(svc.Endpoints) > 0 {
		labels, sa = svc.Endpoints[0].Labels, svc.Endpoints[0].ServiceAccount
	}
	headers := map[string]string{}
	for k, v := range r.Headers {
		headers[strings.ToLower(k)] = v
	}
	if r.JWT != "" {
		headers["authorization"] = "Bearer " + r.JWT
	}
	method, path := cmp.Or(r.Method, "GET"), cmp.Or(r.Path, "/")
	authority := fmt.Sprintf("%s:%d", svc.Hostname, port)
	headers[":authority"], headers[":method"], headers[":path"] = authority, method, path
	dest := ""
	if sa != "" {
		dest = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, svc.Namespace, sa)
	}
	keys := mesh.SortedKeys(labels)
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: socket("127.0.0.1", 0), Principal: r.From},
		Destination: &authv3.AttributeContext_Peer{Address: socket("127.0.0.1", port), Principal: dest},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: authority, Scheme: "http", Protocol: "HTTP/1.1", Headers: headers,
		}},
		ContextExtensions: map[string]string{
			ExtensionWorkloadNamespace: svc.Namespace,
			ExtensionWorkloadLabels:    EncodeLabels(keys, labels),
		},
	}}
	e := evaluate(ctx, s.cfg.Policies.Current(), req, time.Now()) // not counted as a decision
	d := e.decision
	return Explanation{
		Allowed: d.Allowed, HTTPStatus: d.HTTPStatus, Reason: d.Reason, Reasons: d.Reasons, Failure: string(d.Failure),
		Revision: e.revision, Service: svc.Hostname, Port: port, Namespace: svc.Namespace, Labels: labels,
	}, nil
}

func socket(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func splitHostPort(to string) (string, uint32, error) {
	host, portStr, found := strings.Cut(to, ":")
	if host == "" {
		return "", 0, errors.New("the destination host is empty")
	}
	if !found {
		return host, 0, nil
	}
	var port uint32
	if _, err := fmt.Sscan(portStr, &port); err != nil || port == 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a port number", portStr)
	}
	return host, port, nil
}

// findService finds a service by its hostname, or by a short name (reviews,
// reviews.default) that the hostname starts with.
func findService(snap *mesh.Snapshot, host string) *mesh.Service {
	if snap == nil {
		return nil
	}
	host = strings.ToLower(host)
	if i, ok := slices.BinarySearchFunc(snap.Services, host, func(s *mesh.Service, h string) int { return strings.Compare(s.Hostname, h) }); ok {
		return snap.Services[i]
	}
	for _, s := range snap.Services {
		if strings.HasPrefix(s.Hostname, host+".") {
			return s
		}
	}
	return nil
}

// ExplainHandler serves Explain as POST with an ExplainRequest in JSON, answering
// an Explanation; snap gives the snapshot in force.
func ExplainHandler(s *Server, snap func() *mesh.Snapshot, trustDomain string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req ExplainRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, "bad explain request: "+err.Error(), http.StatusBadRequest)
			return
		}
		e, err := s.Explain(r.Context(), snap(), trustDomain, req)
		switch {
		case errors.Is(err, ErrUnknownService):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(e)
	})
}
