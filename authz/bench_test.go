package authz

import (
	"context"
	"testing"

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
