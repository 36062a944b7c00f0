// Package policygen makes what authorization benchmarks feed Palisade: mesh
// policies (a generated mesh of 100 AuthorizationPolicies and a
// RequestAuthentication, see Generate), the CheckRequests an inbound Envoy sidecar
// sends to ext_authz, and ES256 JWTs with their JWKS.
//
// It imports neither authz nor rego, so that benchmarks in package authz itself can
// use it.
package policygen

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The workload under test: reviews v1 in namespace shop, whose sidecar asks
// ext_authz about every request it receives.
const (
	TrustDomain = "cluster.local"
	Namespace   = "shop"
	// Authority is the :authority callers use.
	Authority = "reviews.shop.svc.cluster.local:9080"
	// Port is the workload's (destination) port.
	Port = 9080
)

// WorkloadLabels are the labels of the workload under test.
var WorkloadLabels = map[string]string{"app": "reviews", "version": "v1"}

// The context extensions by which the xDS configuration names the workload to
// ext_authz. They equal authz.ExtensionWorkloadNamespace and
// authz.ExtensionWorkloadLabels (package authz cannot be imported here; the
// benchmark's tests check that they agree).
const (
	ExtensionWorkloadNamespace = "palisade.workload.namespace"
	ExtensionWorkloadLabels    = "palisade.workload.labels"
)

// workloadLabels is WorkloadLabels as ExtensionWorkloadLabels has them (sorted).
const workloadLabels = "app=reviews,version=v1"

// Principal is the SPIFFE ID of service account sa in namespace ns.
func Principal(ns, sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, ns, sa)
}

// Call describes one request to the workload under test.
type Call struct {
	Method, Path string
	// Source is the mTLS peer's SPIFFE ID (see Principal); "" for a plaintext
	// request.
	Source string
	// Token is sent as "authorization: Bearer TOKEN"; "" sends no token.
	Token string
}

// Variant is one request of a load's cycle, with the decision the policies are
// written to give it.
type Variant struct {
	Name    string
	Allowed bool
	Request *authv3.CheckRequest
}

// CheckRequest is the CheckRequest an inbound Envoy sidecar (ext_authz filter,
// gRPC, without request body) sends for c: the usual dozen and a half headers,
// B3 tracing and XFCC included, source and destination addresses and principals,
// empty metadata contexts (Envoy always sets them) and the context extensions
// naming the workload. Renew gives it a fresh request id and time.
func CheckRequest(c Call) *authv3.CheckRequest {
	headers := map[string]string{
		":authority":            Authority,
		":method":               c.Method,
		":path":                 c.Path,
		":scheme":               "http",
		"user-agent":            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
		"accept":                "application/json, text/plain, */*",
		"accept-encoding":       "gzip, deflate, br",
		"accept-language":       "en-US,en;q=0.9",
		"x-request-id":          "",
		"x-forwarded-proto":     "http",
		"x-envoy-attempt-count": "1",
		"x-b3-traceid":          "80f198ee56343ba864fe8b2a57d3eff7",
		"x-b3-spanid":           "e457b5a2e4d86bd1",
		"x-b3-parentspanid":     "05e3ac9a4f6e3b90",
		"x-b3-sampled":          "1",
	}
	size := int64(-1) // Envoy's "unknown"
	if c.Method == "POST" || c.Method == "PUT" || c.Method == "PATCH" {
		headers["content-type"] = "application/json"
		headers["content-length"] = "64"
		size = 64
	}
	if c.Token != "" {
		headers["authorization"] = "Bearer " + c.Token
	}
	if c.Source != "" {
		headers["x-forwarded-client-cert"] = fmt.Sprintf("By=%s;Hash=%s;Subject=\"\";URI=%s",
			Principal(Namespace, "reviews"), "8ce5b8a1b2f24e1e5a10c3fd6c40b6c1a7e0a3f2f5d5d2d6e9e4a0b7c3c1f0aa", c.Source)
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   socketAddress("10.244.1.17", 48234),
			Principal: c.Source,
		},
		Destination: &authv3.AttributeContext_Peer{
			Address:   socketAddress("10.244.2.9", Port),
			Principal: Principal(Namespace, "reviews"),
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Method:   c.Method,
				Headers:  headers,
				Path:     c.Path,
				Host:     Authority,
				Scheme:   "http",
				Protocol: "HTTP/1.1",
				Size:     size,
			},
		},
		ContextExtensions: map[string]string{
			ExtensionWorkloadNamespace: Namespace,
			ExtensionWorkloadLabels:    workloadLabels,
		},
		MetadataContext:      &corev3.Metadata{},
		RouteMetadataContext: &corev3.Metadata{},
	}}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// seed makes request ids differ between processes.
var seed = rand.Uint64()

// Renew gives req the stream id, x-request-id (a UUID) and time of the n-th
// request, as Envoy gives every request its own. It modifies req: each caller
// renews its own copy.
func Renew(req *authv3.CheckRequest, n uint64) {
	h := req.GetAttributes().GetRequest().GetHttp()
	x := n*0x9e3779b97f4a7c15 ^ seed
	h.Id = strconv.FormatUint(x>>1, 10)
	h.Headers["x-request-id"] = fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", uint32(x>>32), uint16(x>>16), uint16(x)&0xfff, uint16(n)&0xfff, n&0xffffffffffff)
	req.Attributes.Request.Time = timestamppb.New(time.Now())
}
