package authz

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// request is a CheckRequest shaped as Envoy's ext_authz filter sends it from an
// inbound sidecar listener with mTLS.
type request struct {
	method, path, host string
	from               string // the client's SPIFFE ID ("" for plaintext)
	headers            map[string]string
	body               string
	port               uint32
	extensions         map[string]string
}

func (r request) check() *authv3.CheckRequest {
	headers := map[string]string{
		":authority": r.host, ":method": r.method, ":path": r.path, ":scheme": "http",
		"user-agent": "grpc-go/1.85.0", "x-request-id": "5c1f2b7e-8d0b-4d3c-9f7e-0a1b2c3d4e5f",
		"x-forwarded-proto": "http", "x-envoy-attempt-count": "1",
	}
	for k, v := range r.headers {
		headers[k] = v
	}
	port := r.port
	if port == 0 {
		port = 9080
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   socket("10.0.0.7", 51234),
			Principal: r.from,
		},
		Destination: &authv3.AttributeContext_Peer{
			Address:   socket("10.0.0.9", port),
			Principal: "spiffe://cluster.local/ns/default/sa/reviews",
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(timestamppb.Now().AsTime().Truncate(1000)),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: headers["x-request-id"], Method: r.method, Path: r.path, Host: r.host,
				Scheme: "http", Protocol: "HTTP/2", Headers: headers, Body: r.body, Size: int64(len(r.body)),
			},
		},
		ContextExtensions: r.extensions,
		TlsSession:        &authv3.AttributeContext_TLSSession{Sni: "outbound_.9080_._.reviews.default.svc.cluster.local"},
	}}
}

// toJSON gives an input document in encoding/json's generic form.
func toJSON(t *testing.T, v ast.Value) map[string]any {
	t.Helper()
	x, err := ast.JSON(v)
	if err != nil {
		t.Fatal(err)
	}
	return x.(map[string]any)
}

// TestInputMatchesOPAEnvoy: the directly built input equals OPA-Envoy's protojson
// mapping, field for field, besides Palisade's own input.palisade.
func TestInputMatchesOPAEnvoy(t *testing.T) {
	meta, _ := structpb.NewStruct(map[string]any{"envoy.filters.http.jwt_authn": map[string]any{"sub": "alice"}})
	withMeta := request{method: "GET", path: "/", host: "a"}.check()
	withMeta.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"jwt": meta}}
	withMeta.Attributes.Source.Labels = map[string]string{"app": "x"}
	withMeta.Attributes.Source.Certificate = "-----BEGIN%20CERTIFICATE-----"

	for name, req := range map[string]*authv3.CheckRequest{
		"GET with query": request{method: "GET", path: "/api/v1/items?id=1&id=2&q=a%20b", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage"}.check(),
		"POST JSON": request{method: "POST", path: "/items", host: "reviews", headers: map[string]string{
			"content-type": "application/json", "content-length": "27"}, body: `{"name":"x","tags":[1,2.5]}`}.check(),
		"truncated JSON":  request{method: "POST", path: "/items", host: "reviews", headers: map[string]string{"content-type": "application/json", "content-length": "100"}, body: `{"name":`}.check(),
		"encoded path":    request{method: "GET", path: "/a%2Fb/c%20d/", host: "reviews"}.check(),
		"dot segments":    request{method: "GET", path: "/a/../b/./c", host: "reviews"}.check(),
		"plaintext":       request{method: "GET", path: "/", host: "reviews"}.check(),
		"extensions":      request{method: "GET", path: "/", host: "r", extensions: map[string]string{ExtensionWorkloadNamespace: "ns", ExtensionWorkloadLabels: "app=r,version=v1"}}.check(),
		"metadata":        withMeta,
		"empty metadata":  {Attributes: &authv3.AttributeContext{MetadataContext: &corev3.Metadata{}, RouteMetadataContext: &corev3.Metadata{}}},
		"no attributes":   {},
		"grpc":            request{method: "POST", path: "/helloworld.Greeter/SayHello", host: "greeter:50051", headers: map[string]string{"content-type": "application/grpc"}}.check(),
		"named port":      {Attributes: &authv3.AttributeContext{Destination: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "::1", Protocol: corev3.SocketAddress_UDP, PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "http"}}}}}}},
		"pipe address":    {Attributes: &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/x.sock"}}}}}},
		"empty JSON body": request{method: "POST", path: "/", host: "r", headers: map[string]string{"content-type": "application/json"}}.check(),
	} {
		t.Run(name, func(t *testing.T) {
			want, err := InputViaJSON(req)
			if err != nil {
				t.Fatal(err)
			}
			got := toJSON(t, Input(req))
			delete(got, "palisade")
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("input differs from OPA-Envoy's (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInputWorkload(t *testing.T) {
	for _, c := range []struct {
		name string
		req  *authv3.CheckRequest
		want string
	}{
		{"from context extensions", request{extensions: map[string]string{ExtensionWorkloadNamespace: "shop", ExtensionWorkloadLabels: "app=cart,version=v2"}}.check(),
			`{"labels":{"app":"cart","version":"v2"},"namespace":"shop"}`},
		{"namespace from the destination's SPIFFE ID", request{}.check(), `{"labels":{},"namespace":"default"}`},
		{"nothing known", &authv3.CheckRequest{}, `{"labels":{},"namespace":""}`},
		{"malformed labels keep what parses", request{extensions: map[string]string{ExtensionWorkloadNamespace: "n", ExtensionWorkloadLabels: "a=1,,=x,b"}}.check(),
			`{"labels":{"a":"1"},"namespace":"n"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := json.Marshal(toJSON(t, Input(c.req))["palisade"].(map[string]any)["workload"])
			if string(got) != c.want {
				t.Errorf("workload = %s, want %s", got, c.want)
			}
		})
	}
}

// TestInputOddPaths: targets net/url rejects still give an input, with the raw
// segments.
func TestInputOddPaths(t *testing.T) {
	for path, want := range map[string]string{
		"/a%zz/b":                     `["a%zz","b"]`,
		"//evil.example/x":            `["evil.example","x"]`,
		"/%":                          `["%"]`,
		"":                            `[""]`,
		"/a/b?x=%zz&y=1":              `["a","b"]`,
		"/" + strings.Repeat("a/", 3): `["a","a","a",""]`,
	} {
		in := toJSON(t, Input(request{method: "GET", path: path}.check()))
		got, _ := json.Marshal(in["parsed_path"])
		if string(got) != want {
			t.Errorf("path %q: parsed_path = %s, want %s", path, got, want)
		}
	}
}

// TestInputPartsHoldTheirPaths: the input built for a set of paths has, at each
// of them, the value the whole input has there, and leaves out the headers when
// no path needs them.
func TestInputPartsHoldTheirPaths(t *testing.T) {
	req := request{method: "POST", path: "/api/x?a=1&a=2", host: "h:80", from: "spiffe://cluster.local/ns/a/sa/b",
		headers:    map[string]string{"authorization": "Bearer t", "content-type": "application/json", "cookie": "s=1"},
		body:       `{"k": [1, 2]}`,
		extensions: map[string]string{ExtensionWorkloadNamespace: "ns", ExtensionWorkloadLabels: "app=x"}}.check()
	req.Attributes.TlsSession = &authv3.AttributeContext_TLSSession{Sni: "h"}
	req.Attributes.Request.Time = timestamppb.New(time.Unix(1700000000, 0))
	full := Input(req)
	paths := []string{
		"input", "input.attributes", "input.attributes.source", "input.attributes.source.principal",
		"input.attributes.destination.address", "input.attributes.request", "input.attributes.request.time",
		"input.attributes.request.http", "input.attributes.request.http.method", "input.attributes.request.http.headers",
		"input.attributes.request.http.headers.authorization", "input.attributes.request.http.headers.absent",
		"input.attributes.contextExtensions", "input.attributes.metadataContext", "input.attributes.tlsSession.sni",
		"input.parsed_path", "input.parsed_query.a", "input.parsed_body.k", "input.truncated_body", "input.version",
		"input.palisade.workload", "input.unknown",
	}
	for _, one := range paths {
		for _, other := range []string{"", "input.parsed_query", "input.attributes.request.http.headers.cookie"} {
			refs := []ast.Ref{ast.MustParseRef(one)}
			if other != "" {
				refs = append(refs, ast.MustParseRef(other))
			}
			pruned := buildInput(req, partsOf(refs))
			for _, r := range refs {
				want, wantErr := full.Find(r[1:])
				got, gotErr := pruned.Find(r[1:])
				if (wantErr == nil) != (gotErr == nil) || (wantErr == nil && want.Compare(got) != 0) {
					t.Errorf("paths %v: at %v the input has %v (%v), the input built for them %v (%v)", refs, r, want, wantErr, got, gotErr)
				}
			}
		}
	}
	small := buildInput(req, partsOf([]ast.Ref{ast.MustParseRef("input.attributes.request.http.method")}))
	if _, err := small.Find(ast.MustParseRef("input.attributes.request.http.headers")[1:]); err == nil {
		t.Errorf("the input built for the method has headers: %v", small)
	}
}
