package policygen

import (
	"fmt"
	"strings"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// Set is a generated mesh of policies and the requests to decide against it.
type Set struct {
	// YAML holds every object, as a user would write them in one file of a
	// config directory.
	YAML []byte
	// Snapshot is YAML decoded and built, ready for authz.Policy.
	Snapshot *mesh.Snapshot
	// Variants are the requests to the workload under test, in a fixed cycle,
	// each with the decision the policies give it.
	Variants []Variant
	// Selecting is how many AuthorizationPolicies apply to the workload under
	// test (the others are in other namespaces or select other workloads).
	Selecting int
}

// The fixed policies of Generate that apply to the workload under test.
const selectingPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/productpage, cluster.local/ns/frontend/sa/gateway]}}]
    to: [{operation: {methods: [GET, HEAD], paths: ["/api/*", /healthz]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-allow-jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews, version: v1}}
  rules:
  - from: [{source: {requestPrincipals: ["https://auth.palisade.dev/*"], namespaces: [shop, frontend]}}]
    to: [{operation: {methods: [GET, POST], paths: ["/api/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [reviewers, admins]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-allow-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [monitoring]}}]
    to: [{operation: {ports: ["15020"], paths: [/stats/prometheus]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-deny-foreign, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [shop, frontend, istio-system, monitoring]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/debug/*"]}}]
`

const nSelecting = 6

var otherApps = []string{"ratings", "details", "productpage", "cart", "checkout", "search", "payments", "inventory"}

// Generate makes a mesh of n AuthorizationPolicies (n >= 6), mixed ALLOW and DENY
// with from, to and when rules: 6 apply to the workload under test (reviews v1 in
// shop: two ALLOW by principal or by JWT and claim, one ALLOW that never matches
// it, two DENY, and a mesh-wide DENY of the root namespace); of the rest, about
// two fifths are in shop or the root namespace but select other workloads (other
// apps, other versions of reviews), so the decision reads and rejects them, and
// three fifths are in namespaces team-00 to team-11. Plus a RequestAuthentication
// for reviews with two issuers: Issuer (signer's JWKS) and a partner's. Signer
// signs the variants' tokens.
func Generate(n int, signer *Signer) (*Set, error) {
	if n < nSelecting {
		return nil, fmt.Errorf("at least %d policies", nSelecting)
	}
	partner, err := NewSigner("partner")
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(selectingPolicies)
	fmt.Fprintf(&b, `---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: reviews-jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules:
  - issuer: %s
    audiences: [%s]
    jwks: '%s'
  - issuer: https://accounts.partner.example
    jwks: '%s'
    fromHeaders: [{name: x-partner-token}]
`, Issuer, Audience, signer.JWKS(), partner.JWKS())
	for i := range n - nSelecting {
		writeOther(&b, i)
	}
	// The workload under test, so that its decision is compiled.
	b.WriteString(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9, labels: {app: reviews, version: v1}, serviceAccount: reviews}]
`)
	data := []byte(b.String())
	objs, diags := config.Decode("policies.yaml", data)
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			return nil, fmt.Errorf("generated policy: %s", d)
		}
	}
	snap := mesh.Build(1, objs)
	if len(snap.AuthorizationPolicies) != n {
		return nil, fmt.Errorf("generated %d AuthorizationPolicies, want %d", len(snap.AuthorizationPolicies), n)
	}
	variants, err := variants(signer)
	if err != nil {
		return nil, err
	}
	return &Set{YAML: data, Snapshot: snap, Variants: variants, Selecting: nSelecting}, nil
}

// writeOther writes the i-th policy that does not apply to the workload under test.
func writeOther(b *strings.Builder, i int) {
	team := fmt.Sprintf("team-%02d", i%12)
	ns, selector := team, ""
	switch i % 5 {
	case 0:
		ns, selector = Namespace, fmt.Sprintf("{app: %s}", otherApps[i%len(otherApps)])
	case 1:
		ns, selector = mesh.RootNamespace, fmt.Sprintf("{app: %s, tier: backend}", otherApps[i%len(otherApps)])
	case 2:
		ns, selector = Namespace, fmt.Sprintf("{app: reviews, version: v%d}", 2+i%3)
	case 3:
		selector = fmt.Sprintf("{app: svc-%d}", i)
	}
	action := "ALLOW"
	if i%3 == 0 {
		action = "DENY"
	}
	fmt.Fprintf(b, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: policy-%03d, namespace: %s}\nspec:\n", i, ns)
	if selector != "" {
		fmt.Fprintf(b, "  selector: {matchLabels: %s}\n", selector)
	}
	fmt.Fprintf(b, `  action: %s
  rules:
  - from: [{source: {principals: [cluster.local/ns/%[2]s/sa/svc-%[3]d, "cluster.local/ns/%[2]s/sa/batch-*"]}}]
    to: [{operation: {methods: [GET, POST], paths: ["/v1/items/*", /v1/orders/%[3]d]}}]
    when: [{key: "request.headers[x-tenant]", values: [tenant-%[3]d, "shared-*"]}]
  - from: [{source: {requestPrincipals: ["%[4]s/*"], namespaces: [%[2]s, frontend]}}]
    to: [{operation: {hosts: [svc-%[3]d.%[2]s.svc.cluster.local, "*.internal"], ports: ["8080", "8443"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: [%[2]s-admins]}
    - {key: source.ip, values: [10.0.0.0/8], notValues: [10.99.0.0/16]}
`, action, team, i, Issuer)
}

// variants are the requests to reviews v1 of Generate's mesh; selectingPolicies
// say why each gets its decision.
func variants(signer *Signer) ([]Variant, error) {
	impostor, err := NewSigner(signer.KeyID) // same issuer and key id, other key
	if err != nil {
		return nil, err
	}
	reviewer := signer.UserToken("alice", "reviewers")
	guest := signer.UserToken("carol", "guests")
	forged := impostor.UserToken("alice", "admins")
	productpage := Principal(Namespace, "productpage")
	ratings := Principal(Namespace, "ratings")
	gateway := Principal("frontend", "gateway")
	foreign := Principal("team-03", "svc-3")
	vs := []struct {
		name    string
		allowed bool
		call    Call
	}{
		{"productpage GET /api, JWT", true, Call{"GET", "/api/reviews/1", productpage, reviewer}},
		{"productpage HEAD /healthz", true, Call{"HEAD", "/healthz", productpage, ""}},
		{"ratings GET /api (no ALLOW matches)", false, Call{"GET", "/api/reviews/1", ratings, ""}},
		{"ratings POST /api, JWT of a reviewer", true, Call{"POST", "/api/reviews", ratings, reviewer}},
		{"productpage DELETE /api, JWT", false, Call{"DELETE", "/api/reviews/1", productpage, reviewer}},
		{"productpage GET /admin (DENY)", false, Call{"GET", "/admin/users", productpage, reviewer}},
		{"productpage GET /debug (mesh-wide DENY)", false, Call{"GET", "/debug/pprof/heap", productpage, ""}},
		{"team-03 GET /api, JWT (DENY foreign)", false, Call{"GET", "/api/reviews/1", foreign, reviewer}},
		{"productpage GET /api, forged JWT (401)", false, Call{"GET", "/api/reviews/1", productpage, forged}},
		{"ratings GET /api, JWT of a guest", false, Call{"GET", "/api/reviews/1", ratings, guest}},
		{"gateway GET /api?query", true, Call{"GET", "/api/reviews/7?sort=date&page=2", gateway, ""}},
	}
	out := make([]Variant, len(vs))
	for i, v := range vs {
		out[i] = Variant{Name: v.name, Allowed: v.allowed, Request: CheckRequest(v.call)}
	}
	return out, nil
}
