package authz

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/rego"
)

// smallPolicies is a principal/method/path policy: an ALLOW and a DENY.
const smallPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [GET], paths: ["/reviews/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
`

func benchEngine(b *testing.B, yaml string) *rego.Engine {
	objs, diags := config.Decode("p.yaml", []byte(yaml))
	if len(diags) > 0 {
		b.Fatal(diags)
	}
	p, _ := Policy(mesh.Build(1, objs), nil)
	e := rego.NewEngine(rego.EngineConfig{Query: DecisionQuery, JWTCacheEntries: 1000})
	if err := e.Update(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	return e
}

func BenchmarkInput(b *testing.B) {
	req := request{method: "GET", path: "/reviews/1?x=1", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage",
		extensions: map[string]string{ExtensionWorkloadNamespace: "default", ExtensionWorkloadLabels: "app=reviews"}}.check()
	b.ReportAllocs()
	for b.Loop() {
		Input(req)
	}
}

func BenchmarkInputViaJSON(b *testing.B) {
	req := request{method: "GET", path: "/reviews/1?x=1", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage"}.check()
	b.ReportAllocs()
	for b.Loop() {
		InputViaJSON(req)
	}
}

func BenchmarkDecideSmall(b *testing.B) {
	s := NewServer(Config{Policies: benchEngine(b, smallPolicies)})
	req := request{method: "GET", path: "/reviews/1", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage",
		extensions: map[string]string{ExtensionWorkloadNamespace: "default", ExtensionWorkloadLabels: "app=reviews"}}.check()
	ctx := context.Background()
	if resp, _ := s.Check(ctx, req); resp.GetOkResponse() == nil {
		b.Fatalf("denied: %v", resp.GetStatus())
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Check(ctx, req)
	}
}

// reviewsWorkload makes the policies' workload part of the mesh, so that Policy
// compiles its decision (natively, for policies without RegoPolicy or CUSTOM).
const reviewsWorkload = `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9, labels: {app: reviews}, serviceAccount: reviews}]
`

// BenchmarkDecideNative: the decisions of BenchmarkDecideSmall and of a JWT policy
// (a valid token and one of another signer), made natively, with gRPC left out.
func BenchmarkDecideNative(b *testing.B) {
	s := newSigners(b)
	jwtPolicies := fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules: [{issuer: %q, audiences: [%q], jwks: '%s'}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviewers, namespace: default}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [reviewers]}]
`, policygen.Issuer, policygen.Audience, s.main.JWKS())
	ext := map[string]string{ExtensionWorkloadNamespace: "default", ExtensionWorkloadLabels: "app=reviews"}
	for _, c := range []struct {
		name, policies, token string
		allowed               bool
	}{
		{"small", smallPolicies, "", true},
		{"jwt-valid", jwtPolicies, s.main.UserToken("alice", "reviewers"), true},
		{"jwt-forged", jwtPolicies, s.impostor.UserToken("alice", "reviewers"), false},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := benchEngine(b, c.policies+reviewsWorkload).Current()
			r := request{method: "GET", path: "/reviews/1", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage", extensions: ext}
			if c.token != "" {
				r.headers = map[string]string{"authorization": "Bearer " + c.token}
			}
			req := r.check()
			if n, _ := p.Policy.Native.(nativeDecisions); n[WorkloadQuery(req)] == nil {
				b.Fatal("the workload has no native decision")
			}
			ctx := context.Background()
			if d := Decide(ctx, p, req); d.Allowed != c.allowed {
				b.Fatalf("allowed %v (%s), want %v", d.Allowed, d.Reason, c.allowed)
			}
			b.ReportAllocs()
			for b.Loop() {
				Decide(ctx, p, req)
			}
		})
	}
}

// BenchmarkDecisionLogEntry: encoding one entry of a native decision (what the
// decision log's writer does per decision, beside the decision itself).
func BenchmarkDecisionLogEntry(b *testing.B) {
	req := request{method: "GET", path: "/reviews/1?page=2", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage",
		headers: map[string]string{"authorization": "Bearer x.y.z", "cookie": "a=b", "accept": "*/*", "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
			"x-b3-spanid": "e457b5a2e4d86bd1", "x-b3-sampled": "1", "content-type": "text/plain", "x-forwarded-for": "203.0.113.7"},
		extensions: map[string]string{ExtensionWorkloadNamespace: "default", ExtensionWorkloadLabels: "app=reviews"}}.check()
	p := benchEngine(b, smallPolicies+reviewsWorkload).Current()
	e := evaluate(context.Background(), p, req, time.Now())
	if !e.native {
		b.Fatal("not a native decision")
	}
	l := &DecisionLog{cfg: DecisionLogConfig{Path: "palisade/mesh/decision", Bundle: "palisade"}}
	entry := logEntry{time: time.Now(), req: req, decision: e.decision, native: true, revision: "r", peer: "127.0.0.1:1", duration: time.Microsecond}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = l.encode(buf[:0], entry)
	}
	b.SetBytes(int64(len(buf)))
}
