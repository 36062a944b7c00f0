package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/config/policypb"
	"github.com/palisade-mesh/palisade/rego"
)

// ---------------------------------------------------------------------------
// Scenarios: snapshots, and the workloads to compile for them.

// compileScenario is a snapshot and the workloads whose requests the test
// decides; fallback are those compile must leave to the library.
type compileScenario struct {
	name      string
	snap      *mesh.Snapshot
	workloads []WorkloadKey
	fallback  []WorkloadKey
	jwks      JWKSSource // the JWKS palisaded fetched for jwksUris
}

// fetched is JWKS fetched for jwksUris, by URI.
type fetched map[string]string

func (f fetched) JWKS(uri string) (string, bool) {
	jwks, ok := f[uri]
	return jwks, ok
}

// signers sign the test's tokens: main is policygen's issuer
// (https://auth.palisade.dev), partner https://accounts.partner.example's,
// impostor has main's key id but another key, bench the key of bench/authz's jwt
// scenario.
type signers struct{ main, partner, impostor, bench *policygen.Signer }

func newSigners(t testing.TB) signers {
	t.Helper()
	var s signers
	var err error
	for _, p := range []struct {
		s  **policygen.Signer
		id string
	}{{&s.main, "k1"}, {&s.partner, "partner"}, {&s.impostor, "k1"}} {
		if *p.s, err = policygen.NewSigner(p.id); err != nil {
			t.Fatal(err)
		}
	}
	pem, err := os.ReadFile("../bench/authz/testdata/jwt-signing-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	if s.bench, err = policygen.ParseSigner(pem, "bench"); err != nil {
		t.Fatal(err)
	}
	return s
}

// decodeSnapshot decodes YAML that must be valid, plus objects made without
// validation (rawObject), into a snapshot.
func decodeSnapshot(t testing.TB, yamlText string, raw ...config.Object) *mesh.Snapshot {
	t.Helper()
	objs, diags := config.Decode("policies.yaml", []byte(yamlText))
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			t.Fatalf("decoding: %s", d)
		}
	}
	return mesh.Build(1, append(objs, raw...))
}

// rawObject is an object whose spec (YAML) is read without Palisade's validation,
// as a snapshot from elsewhere could hold it: what the library must decide on all
// the same (empty patterns, bad IP blocks, unknown keys).
func rawObject(t testing.TB, kind config.Kind, ns, name, spec string) config.Object {
	t.Helper()
	var m proto.Message
	switch kind {
	case config.KindAuthorizationPolicy:
		m = &security.AuthorizationPolicy{}
	case config.KindRequestAuthentication:
		m = &security.RequestAuthentication{}
	case config.KindRegoPolicy:
		m = &policypb.RegoPolicy{}
	}
	js, err := yaml.YAMLToJSON([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("%s/%s: %v", ns, name, err)
	}
	return config.Object{Key: config.Key{Kind: kind, Namespace: ns, Name: name}, Spec: m}
}

func readTestdata(t testing.TB, name string) string {
	t.Helper()
	bs, err := os.ReadFile("testdata/compile/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(bs)
}

// selectorWorkloads are the workloads the snapshot's policies name (each policy's
// namespace with its selector's labels), so that every policy applies to some
// workload of the test, plus extra.
func selectorWorkloads(snap *mesh.Snapshot, extra ...WorkloadKey) []WorkloadKey {
	seen := map[WorkloadKey]bool{}
	sel := func(ns string, labels map[string]string) {
		seen[WorkloadKey{ns, EncodeLabels(mesh.SortedKeys(labels), labels)}] = true
	}
	for _, p := range snap.AuthorizationPolicies {
		sel(p.Key.Namespace, p.Spec.GetSelector().GetMatchLabels())
	}
	for _, p := range snap.RequestAuthentications {
		sel(p.Key.Namespace, p.Spec.GetSelector().GetMatchLabels())
	}
	for _, p := range snap.RegoPolicies {
		sel(p.Key.Namespace, p.Spec.GetSelector().GetMatchLabels())
	}
	for _, k := range extra {
		seen[k] = true
	}
	out := slices.Collect(maps.Keys(seen))
	slices.SortFunc(out, compareKeys)
	return out
}

func scenarios(t testing.TB, s signers) []compileScenario {
	t.Helper()
	var out []compileScenario

	e2e := decodeSnapshot(t, fmt.Sprintf(readTestdata(t, "e2e.yaml"), s.main.JWKS()))
	out = append(out, compileScenario{name: "e2e", snap: e2e, workloads: selectorWorkloads(e2e,
		WorkloadKey{"default", "app=reviews"}, WorkloadKey{"default", "app=ratings"}, WorkloadKey{"default", "app=details"},
		WorkloadKey{"default", "app=orders"}, WorkloadKey{"default", ""}, WorkloadKey{"istio-system", "app=reviews"},
		WorkloadKey{"other", "app=reviews"})})

	for _, name := range []string{"small", "jwt"} {
		bs, err := os.ReadFile("../bench/authz/testdata/" + name + "/policies.yaml")
		if err != nil {
			t.Fatal(err)
		}
		snap := decodeSnapshot(t, string(bs))
		out = append(out, compileScenario{name: "bench-" + name, snap: snap, workloads: selectorWorkloads(snap,
			WorkloadKey{"shop", "app=reviews,version=v1"}, WorkloadKey{"shop", "app=ratings"}, WorkloadKey{"other", "app=reviews"})})
	}

	set, err := policygen.Generate(100, s.main)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, compileScenario{name: "policygen-100", snap: set.Snapshot, workloads: selectorWorkloads(set.Snapshot,
		WorkloadKey{policygen.Namespace, "app=reviews,version=v1"}, WorkloadKey{policygen.Namespace, "app=reviews,version=v2"},
		WorkloadKey{"team-03", "app=svc-3"}, WorkloadKey{"frontend", "app=gateway"})})

	features := decodeSnapshot(t, fmt.Sprintf(readTestdata(t, "features.yaml"), s.main.JWKS(), s.partner.JWKS()))
	out = append(out, compileScenario{name: "features", snap: features, workloads: selectorWorkloads(features,
		WorkloadKey{"features", "app=api"}, WorkloadKey{"features", "app=api,jwt=mesh"}, WorkloadKey{"features", "app=api,tier=none"},
		WorkloadKey{"features", "app=custom"}, WorkloadKey{"features", "app=custom,rego=root"}, WorkloadKey{"features", "jwt=mesh"},
		WorkloadKey{"istio", "app=api"}, WorkloadKey{"istio", "app=api,rego=root"}, WorkloadKey{"istio-system", "app=api"}, WorkloadKey{"istio-system", ""},
		WorkloadKey{"features", "app=nojwt"}, WorkloadKey{"features", "app=merge,jwt=mesh"},
		WorkloadKey{"elsewhere", "app=api,rego=root"})})

	out = append(out, edgeScenario(t, s))
	return out
}

// edgeScenario holds what validation rejects but a snapshot may still carry: the
// library decides on it, and so must the compiled module (or leave it to the
// library).
func edgeScenario(t testing.TB, s signers) compileScenario {
	t.Helper()
	ap := func(ns, name, spec string) config.Object {
		return rawObject(t, config.KindAuthorizationPolicy, ns, name, spec)
	}
	snap := decodeSnapshot(t, "",
		ap("edge", "odd-patterns", `
selector: {matchLabels: {app: edge}}
rules:
- when: [{key: destination.port, values: [""]}]
- to: [{operation: {paths: ["", "**", "*a*", "/x*y"], methods: ["get", "*"]}}]
- from: [{source: {principals: [""], ipBlocks: [bad-block, 10.0.0.1/33, "10.0.0.7"]}}]
- from: [{}]
  to: [{operation: {ports: [""]}}]
- when: [{key: source.principal}, {key: "request.headers[x-tenant]", values: [""]}]
- when: [{key: "request.headers[x-empty]", values: ["", "*"]}]
- when: [{key: "request.headers[x-tenant]", notValues: [""]}, {key: source.ip, values: [""]}, {key: "request.auth.presenter", values: ["*"]}]
- from: [{source: {}}, {source: {namespaces: [""]}}]
  to: [{}, {operation: {hosts: ["", "*"]}}]
  when: [{key: "request.headers[]", notValues: [""]}, {key: "request.auth.claims[]", notValues: ["x"]}]
`),
		ap("edge", "deny-no-rules", "action: DENY\nselector: {matchLabels: {app: edge}}"),
		ap("edge", "audit-no-rules", "action: AUDIT"),
		ap("edge", "custom-no-provider", `
selector: {matchLabels: {app: edge}}
action: CUSTOM
rules: [{to: [{operation: {paths: ["/custom*"]}}]}]
`),
		ap("edge", "custom-empty-provider", `
selector: {matchLabels: {app: edge}}
action: CUSTOM
provider: {}
rules: [{to: [{operation: {paths: ["/nop*"]}}]}]
`),
		ap("edge", "sa-fallback", `
selector: {matchLabels: {app: sa}}
rules: [{from: [{source: {serviceAccounts: [default/sleep]}}]}]
`),
		ap("edge", "key-fallback", `
selector: {matchLabels: {app: key}}
rules: [{when: [{key: experimental.envoy.filters.x, values: [a]}]}]
`),
		rawObject(t, config.KindRegoPolicy, "edge", "undefined-verdict", `
selector: {matchLabels: {app: edge, rego: undefined}}
decision: nothing
rego: "package x\n\nallow := true\n"
`),
		rawObject(t, config.KindRegoPolicy, "edge", "broken-module", `
selector: {matchLabels: {app: edge}}
rego: "package x\n\nallow := \n"
`),
		rawObject(t, config.KindRequestAuthentication, "edge", "edge-jwt", fmt.Sprintf(`
selector: {matchLabels: {app: edge}}
jwtRules:
- {issuer: https://auth.palisade.dev, jwks: '%s'}
- {issuer: https://accounts.partner.example, jwksUri: https://partner.example/jwks, audiences: [api]}
- {issuer: https://accounts.partner.example, jwksUri: https://partner.example/unfetched}
`, s.main.JWKS())),
		// A RequestAuthentication without rules: tokens are not looked for.
		rawObject(t, config.KindRequestAuthentication, "edge", "no-rules", "selector: {matchLabels: {app: other}}"),
	)
	return compileScenario{
		name: "edge", snap: snap,
		workloads: []WorkloadKey{{"edge", "app=edge"}, {"edge", "app=edge,rego=undefined"}, {"edge", ""}, {"edge", "app=other"}},
		fallback:  []WorkloadKey{{"edge", "app=sa"}, {"edge", "app=key"}},
		jwks:      fetched{"https://partner.example/jwks": s.partner.JWKS()},
	}
}

// ---------------------------------------------------------------------------
// Requests.

// requestGen makes random requests to a workload from pools of values chosen to
// hit the scenarios' policies and their edges.
type requestGen struct {
	r      *rand.Rand
	tokens []string
}

func newRequestGen(s signers, seed uint64) *requestGen {
	now := time.Now().Unix()
	claims := func(user string, change func(c map[string]any), groups ...string) map[string]any {
		c := policygen.Claims(user, groups...)
		if change != nil {
			change(c)
		}
		return c
	}
	tok := func(signer *policygen.Signer, c map[string]any) string { return signer.Token(c) }
	tokens := []string{
		s.main.UserToken("alice", "reviewers"),
		s.main.UserToken("bob", "admins"),
		s.main.UserToken("carol", "guests"),
		s.main.UserToken("mallory", "admins"),
		tok(s.main, claims("alice", func(c map[string]any) { c["aud"] = "api" }, "raters")),
		tok(s.main, claims("alice", func(c map[string]any) { c["aud"] = []any{"ratings"} }, "raters")),
		tok(s.main, claims("bob", func(c map[string]any) { delete(c, "aud") }, "raters", "admins")),
		tok(s.main, claims("alice", func(c map[string]any) { c["aud"] = []any{"other"} }, "admins")),
		tok(s.main, claims("alice", func(c map[string]any) { c["exp"] = now - 3600 }, "reviewers")),
		tok(s.main, claims("alice", func(c map[string]any) { c["nbf"] = now + 3600 }, "reviewers")),
		tok(s.main, claims("alice", func(c map[string]any) {
			c["org"] = map[string]any{"team": "platform"}
			c["level"] = 3
			c["verified"] = true
			c["azp"] = "web-app"
		}, "admins")),
		tok(s.main, claims("dave", func(c map[string]any) {
			c["verified"] = false
			c["azp"] = "evil-app"
			c["level"] = 3.5
			c["aud"] = []any{"api", 7}
		}, "admins")),
		tok(s.main, claims("zed", func(c map[string]any) {
			c["org"] = map[string]any{"team": "platform"}
			c["level"] = 3
			c["azp"] = "web-x"
		}, "admins")),
		tok(s.main, claims("yan", func(c map[string]any) { c["azp"] = "webapp" }, "admins")),
		tok(s.main, claims("nina", func(c map[string]any) { c["azp"] = 5 }, "guests")),
		tok(s.main, claims("", func(c map[string]any) { delete(c, "sub"); c["groups"] = "admins" })),
		tok(s.main, claims("eve", func(c map[string]any) { c["iss"] = "https://unknown.example" }, "admins")),
		tok(s.partner, claims("p1", func(c map[string]any) { c["iss"] = "https://accounts.partner.example"; c["aud"] = "api" })),
		tok(s.impostor, claims("alice", nil, "admins")),
		tok(s.bench, claims("alice", nil, "reviewers")),
		tok(s.bench, claims("carol", nil, "guests")),
		"not-a-jwt",
		"a.b.c",
	}
	return &requestGen{r: rand.New(rand.NewPCG(seed, seed^0x5eed)), tokens: tokens}
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

var (
	genMethods = []string{"GET", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "PURGE", ""}
	genPaths   = []string{
		"/", "/api/reviews/1", "/api/reviews", "/api/private/x", "/api/x.json", "/exact", "/admin", "/admin/users",
		"/ADMIN", "/a/b/admin", "/debug/pprof/heap", "/public/x", "/reviews/1", "/healthz", "/local", "/stats/prometheus",
		"/v1/items/3", "/v1/orders/7", "/custom/x", "/admin/custom", "/a/1", "/a/x1", "/b/2", "/c/3", "/open/1",
		"/forbidden/x", "/x/secret", "/api/reviews/7?sort=date&page=2", "/admin?x=1", "/api/../admin",
		"/api/%2e%2e/admin", "", "*", "/\"quoted\"}", "/back\\slash", "/new\nline", "/ünïcode/☃", "/nop", "/xay",
		"**", "/x-y", "/api/x?access_token=TOKEN", "/a/x?token=TOKEN",
	}
	genHosts = []string{
		"reviews:9080", "API.features.svc.cluster.local", "api.features.svc.cluster.local:8080", "x.example.com",
		"X.EXAMPLE.COM:443", "evil.example.com", "[::1]:8080", "10.0.0.1:80", "svc-3.team-03.svc.cluster.local",
		"foo.internal:8443", "", "api", "api:notaport",
	}
	genPrincipals = []string{
		"", "", policygen.Principal("shop", "productpage"), policygen.Principal("frontend", "gateway"),
		policygen.Principal("monitoring", "prometheus"), policygen.Principal("team-03", "svc-3"),
		policygen.Principal("team-03", "batch-7"), policygen.Principal("default", "productpage"),
		policygen.Principal("default", "sleep"), policygen.Principal("features", "trusted"),
		policygen.Principal("features", "blocked"), policygen.Principal("features", "bad-actor"),
		policygen.Principal("team-x", "a"), policygen.Principal("istio", "x"), "spiffe://other.domain/ns/x/sa/y",
		"not-spiffe", "spiffe://cluster.local/weird",
	}
	genSourceIPs = []string{
		"10.244.1.17", "10.1.2.3", "10.1.9.9", "10.66.1.1", "192.168.1.1", "192.168.1.77", "::2", "203.0.113.5", "203.0.113.66",
		"fd00::1", "::1", "2001:db8::5", "10.0.0.7", "10.99.1.1", "not-an-ip", "",
	}
	genDestIPs = []string{"10.0.0.9", "10.244.2.9", "10.0.1.9", "fd00::9"}
	genPorts   = []uint32{9080, 9080, 8080, 8443, 9090, 15020, 0}
	genSNIs    = []string{"", "outbound_.9080_._.reviews.default.svc.cluster.local", "api.features.svc.cluster.local"}
	// genHeaders: each header is set with probability 1/3 to one of its values.
	genHeaders = map[string][]string{
		"x-evil":                   {"true", "false", "TRUE"},
		"x-tenant":                 {"acme", "beta-1", "beta-blocked", "x-corp", "tenant-3", "tenant-7", "shared-a", ""},
		"x-forwarded-for":          {"203.0.113.66, 10.0.0.1", "198.51.100.7", " 203.0.113.9 ", "garbage"},
		"x-envoy-external-address": {"203.0.113.1", "198.51.100.1"},
		"x-ok":                     {"yes", "no"},
		"x-ok2":                    {"yes"},
		"x-deny-plain":             {"1"},
		"x-empty":                  {""},
		"x-partner-auth":           {"Token PARTNER", "Bearer PARTNER"},
	}
	genHeaderNames = slices.Sorted(maps.Keys(genHeaders))
)

// request is a random request to workload k.
func (g *requestGen) request(k WorkloadKey) *authv3.CheckRequest {
	r := g.r
	method, path, host := pick(r, genMethods), pick(r, genPaths), pick(r, genHosts)
	headers := map[string]string{":authority": host, ":method": method, ":path": path, ":scheme": "http",
		"user-agent": "curl/8.5.0", "x-request-id": "0d7c5b6e-2f3a-4a1b-9c8d-7e6f5a4b3c2d"}
	for _, h := range genHeaderNames {
		if r.IntN(3) == 0 {
			headers[h] = pick(r, genHeaders[h])
		}
	}
	// Tokens: none half the time, else one (rarely two) in the places the
	// RequestAuthentications read.
	token := func() string { return pick(r, g.tokens) }
	switch r.IntN(8) {
	case 0, 1:
		headers["authorization"] = "Bearer " + token()
	case 2:
		headers["x-partner-token"] = token()
	case 3:
		headers["authorization"] = "Bearer " + token()
		headers["x-partner-token"] = token()
	case 4:
		headers["cookie"] = "a=b; session=" + token()
	}
	path = strings.ReplaceAll(path, "TOKEN", token())
	if strings.Contains(headers["x-partner-auth"], "PARTNER") {
		headers["x-partner-auth"] = strings.ReplaceAll(headers["x-partner-auth"], "PARTNER", token())
	}
	if r.IntN(10) == 0 {
		headers["authorization"] = token() // without the Bearer prefix: no token
	}
	var body string
	if method == "POST" && r.IntN(2) == 0 {
		body = pick(r, []string{`{"amount": 50}`, `{"amount": 500}`, `not json`})
		headers["content-type"] = "application/json"
		headers["content-length"] = fmt.Sprint(len(body))
	}
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: addr(pick(r, genSourceIPs), 43210), Principal: pick(r, genPrincipals)},
		Destination: &authv3.AttributeContext_Peer{Address: addr(pick(r, genDestIPs), pick(r, genPorts)), Principal: policygen.Principal(k.Namespace, "workload")},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: host, Scheme: "http", Protocol: "HTTP/1.1", Headers: headers,
			Body: body, Size: int64(len(body)),
		}},
		ContextExtensions: map[string]string{ExtensionWorkloadNamespace: k.Namespace, ExtensionWorkloadLabels: k.Labels},
	}}
	if sni := pick(r, genSNIs); sni != "" {
		req.Attributes.TlsSession = &authv3.AttributeContext_TLSSession{Sni: sni}
	}
	return req
}

// ---------------------------------------------------------------------------
// The differential harness.

// preparedPair is the library's decision and the compiled ones, prepared against
// the same modules (the library, users' modules and the compiled modules) and data.
type preparedPair struct {
	prep    *rego.Prepared
	queries map[WorkloadKey]string
	modules map[string]string
	natives map[WorkloadKey]*nativeDecision
}

func preparePair(t testing.TB, snap *mesh.Snapshot, workloads []WorkloadKey, jwks JWKSSource, tamper func(map[string]string)) preparedPair {
	t.Helper()
	p, _ := Policy(snap, jwks)
	modules, queries, natives := compile(snap, workloads, jwks)
	if tamper != nil {
		tamper(modules)
	}
	p.Modules = maps.Clone(p.Modules)
	p.Queries = map[string]string{}
	for name, text := range modules {
		if _, dup := p.Modules[name]; dup && p.Modules[name] != text {
			t.Fatalf("compiled module %s collides with a module of the policy", name)
		}
		p.Modules[name] = text
	}
	for k, q := range queries {
		p.Queries[workloadQueryName(k.Namespace, k.Labels)] = q
	}
	prep, err := rego.Prepare(context.Background(), DecisionQuery, p)
	if err != nil {
		t.Fatalf("preparing the library and the compiled modules: %v", err)
	}
	return preparedPair{prep: prep, queries: queries, modules: modules, natives: natives}
}

// differences decides n random requests per workload both ways and returns the
// differences found (at most max), with how many decisions were compared and
// the distinct reasons seen (to show the requests reach the policies).
func (pp preparedPair) differences(t testing.TB, gen *requestGen, workloads []WorkloadKey, n, max int) (diffs []string, compared int, reasons map[string]bool) {
	t.Helper()
	ctx := context.Background()
	reasons = map[string]bool{}
	for _, k := range workloads {
		if _, ok := pp.queries[k]; !ok {
			t.Fatalf("workload %+v was not compiled", k)
		}
		name := workloadQueryName(k.Namespace, k.Labels)
		for range n {
			req := gen.request(k)
			// The compiled decision gets the input the server gives it: only the
			// parts its query can read.
			want, wantErr := pp.prep.Eval(ctx, Input(req))
			got, gotErr := pp.prep.EvalNamed(ctx, name, buildInput(req, partsOf(pp.prep.InputPaths(name))))
			// So does the library, for the workloads that are not compiled.
			lib, libErr := pp.prep.Eval(ctx, buildInput(req, partsOf(pp.prep.InputPaths(""))))
			if d := cmp.Diff(want, lib); (d != "" || (wantErr == nil) != (libErr == nil)) && len(diffs) < max {
				diffs = append(diffs, fmt.Sprintf("workload %+v: the library decides differently on the input parts it reads (error %v):\n%s", k, libErr, d))
			}
			compared++
			if d, ok := want.(map[string]any); ok {
				reasons[fmt.Sprint(d["reason"])] = true
			}
			diff := cmp.Diff(want, got)
			if (wantErr == nil) != (gotErr == nil) {
				diff = fmt.Sprintf("library error %v, compiled error %v", wantErr, gotErr)
			}
			// The native decision, where there is one, as the decision and as the
			// result the decision log records.
			if n := pp.natives[k]; n != nil && diff == "" {
				d := n.decide(req, time.Now())
				if diff = cmp.Diff(loggedResult(t, want), nativeResult(t, d)); diff == "" && wantErr == nil {
					parsed, _ := parseDecision(want)
					diff = cmp.Diff(parsed, d, cmpopts.EquateEmpty())
				}
				if diff != "" {
					diff = "native: " + diff
				}
			}
			if diff != "" && len(diffs) < max {
				h := req.GetAttributes().GetRequest().GetHttp()
				diffs = append(diffs, fmt.Sprintf("workload %+v, %s %q host %q from %q ip %s headers %q:\n(-library +compiled or native)\n%s",
					k, h.GetMethod(), h.GetPath(), h.GetHost(), req.GetAttributes().GetSource().GetPrincipal(),
					req.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress(), h.GetHeaders(), diff))
			}
		}
	}
	return diffs, compared, reasons
}

// requestsPerWorkload is how many random requests each of a scenario's workloads
// gets: about 3000 per scenario, at least 100 per workload (-short: a tenth).
func requestsPerWorkload(workloads int) int {
	n := max(100, 3000/workloads)
	if testing.Short() {
		n /= 10
	}
	return n
}

// TestCompiledDecisionEqualsLibrary is the differential test: for every scenario
// and workload, random requests get deeply equal decisions (allowed, status,
// headers, body, reason, reasons) from the library and from the compiled module.
func TestCompiledDecisionEqualsLibrary(t *testing.T) {
	s := newSigners(t)
	total := 0
	for i, sc := range scenarios(t, s) {
		t.Run(sc.name, func(t *testing.T) {
			pp := preparePair(t, sc.snap, append(slices.Clone(sc.workloads), sc.fallback...), sc.jwks, nil)
			for _, k := range sc.fallback {
				if q, ok := pp.queries[k]; ok {
					t.Errorf("workload %+v compiled to %s; it uses what the compiler leaves to the library", k, q)
				}
			}
			diffs, n, reasons := pp.differences(t, newRequestGen(s, uint64(i+1)), sc.workloads, requestsPerWorkload(len(sc.workloads)), 5)
			for _, d := range diffs {
				t.Error(d)
			}
			total += n
			// The requests must reach the policies: allowed and denied, by
			// several policies.
			if len(reasons) < 3 {
				t.Errorf("only %d distinct reasons in %d decisions: %v", len(reasons), n, slices.Sorted(maps.Keys(reasons)))
			}
			t.Logf("%d workloads (%d native), %d decisions compared, %d distinct reasons", len(sc.workloads), len(pp.natives), n, len(reasons))
		})
	}
	t.Logf("%d decisions compared in all", total)
}

// TestDifferentialHarnessCatchesMistakes: a compiled module that decides
// differently from the library, however slightly, is caught; so the equality
// above is not vacuous.
func TestDifferentialHarnessCatchesMistakes(t *testing.T) {
	s := newSigners(t)
	for _, c := range []struct{ name, old, new string }{
		{"a pattern", `startswith(authz.path, "/admin")`, `startswith(authz.path, "/admix")`},
		{"a rule index", `allow_matches["default/reviews-viewer"] := 0`, `allow_matches["default/reviews-viewer"] := 1`},
		{"a reason's entry", `"effect": "no match"`, `"effect": "no-match"`},
		{"the reason", `"denied by DENY policy "`, `"denied by DENY policy: "`},
		{"a JWT audience", `"aud": "ratings"`, `"aud": "reviews"`},
		{"a JWT reason", `"Jwt issuer is not configured"`, `"Jwt issuer is unknown"`},
		{"a JWT header removal", `not jwt_rules[k].forwardOriginalToken`, `jwt_rules[k].forwardOriginalToken`},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap, keys := tamperScenario(t, s)
			tampered := 0
			pp := preparePair(t, snap, keys, nil, func(m map[string]string) {
				for name, text := range m {
					if strings.Contains(text, c.old) {
						m[name] = strings.ReplaceAll(text, c.old, c.new)
						tampered++
					}
				}
			})
			if tampered == 0 {
				t.Fatalf("no compiled module contains %q", c.old)
			}
			diffs, n, _ := pp.differences(t, newRequestGen(s, 7), keys, 300, 1)
			if len(diffs) == 0 {
				t.Errorf("%d decisions of a module with %q for %q all equal the library's", n, c.new, c.old)
			}
		})
	}
}

// tamperScenario is the e2e policies with an AUDIT policy, and two of their
// workloads: what the harness tests change decisions of.
func tamperScenario(t *testing.T, s signers) (*mesh.Snapshot, []WorkloadKey) {
	snap := decodeSnapshot(t, fmt.Sprintf(readTestdata(t, "e2e.yaml"), s.main.JWKS())+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: default}
spec:
  action: AUDIT
  rules: [{}]
`)
	return snap, []WorkloadKey{{"default", "app=reviews"}, {"default", "app=ratings"}}
}

// TestDifferentialHarnessCatchesNativeMistakes: so are native decisions that
// decide differently.
func TestDifferentialHarnessCatchesNativeMistakes(t *testing.T) {
	s := newSigners(t)
	for _, c := range []struct {
		name   string
		tamper func(d *nativeDecision) bool // false: nothing to tamper with
	}{
		{"a rule that matches more", func(d *nativeDecision) bool {
			for i := range d.allow {
				for j := range d.allow[i].rules {
					if r := &d.allow[i].rules[j]; len(r.match) > 0 {
						r.match = r.match[1:]
						return true
					}
				}
			}
			return false
		}},
		{"a rule's index", func(d *nativeDecision) bool {
			for _, p := range d.allow {
				for j := range p.rules {
					reason := maps.Clone(p.rules[j].reason.(map[string]any))
					reason["rule"] = json.Number("9")
					p.rules[j].reason = reason
				}
			}
			return len(d.allow) > 0
		}},
		{"the reasons of no match", func(d *nativeDecision) bool {
			d.noMatch = d.noMatch[:len(d.noMatch)/2]
			return len(d.allow) > 0
		}},
		{"a JWT audience", func(d *nativeDecision) bool {
			if d.jwt == nil {
				return false
			}
			for i := range d.jwt.rules {
				d.jwt.rules[i].audiences = []string{"someone-else"}
			}
			return true
		}},
		{"a JWT header removal", func(d *nativeDecision) bool {
			if d.jwt == nil {
				return false
			}
			for i := range d.jwt.rules {
				d.jwt.rules[i].forwardOriginal = !d.jwt.rules[i].forwardOriginal
			}
			return true
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap, keys := tamperScenario(t, s)
			pp := preparePair(t, snap, keys, nil, nil)
			tampered := 0
			for _, d := range pp.natives {
				if c.tamper(d) {
					tampered++
				}
			}
			if tampered == 0 {
				t.Fatalf("no native decision to tamper with")
			}
			diffs, n, _ := pp.differences(t, newRequestGen(s, 7), keys, 300, 1)
			if len(diffs) == 0 {
				t.Errorf("%d decisions of native decisions with %s all equal the library's", n, c.name)
			}
		})
	}
}

// TestCompileInjection: constants that look like Rego (quotes, backslashes,
// newlines, "}", comments, Unicode line separators) stay constants: the module
// parses, defines only the generated rules, and decides as the library.
func TestCompileInjection(t *testing.T) {
	evil := []string{
		`/a"} else := 0 if { true`,
		"/b\"\n\ndecision := {\"allowed\": true}\n#",
		`/c\"\\`,
		"/d\u2028decision := true\u2029",
		"/e # comment } {",
		`/f\u0022`,
	}
	q := func(ss ...string) string {
		parts := make([]string, len(ss))
		for i, s := range ss {
			parts[i] = strings.TrimSuffix(string(mustJSON(t, s)), "\n")
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	ns, name := "inj", "p\"}\nx := 1\n#"
	snap := decodeSnapshot(t, "",
		rawObject(t, config.KindAuthorizationPolicy, ns, name, fmt.Sprintf(`
selector: {matchLabels: {app: "x\"\n#"}}
rules:
- to: [{operation: {paths: %[1]s, methods: %[2]s}}]
- from: [{source: {principals: %[3]s, notNamespaces: %[1]s}}]
- when: [{key: %[4]s, values: %[1]s}, {key: %[5]s, notValues: %[1]s}]
`, q(evil...), q(`GET"}`, "PO\nST"), q(`cluster.local/ns/x/sa/"}`, "*\"\n}"),
			mustJSON(t, "request.headers[x-\"evil\\\n]"), mustJSON(t, "request.auth.claims[a\"][b\\]"))),
		rawObject(t, config.KindAuthorizationPolicy, ns, "deny\n#", fmt.Sprintf(`
action: DENY
rules: [{to: [{operation: {paths: %s}}]}]
`, q(`/deny"}`, "/deny\n"))),
		rawObject(t, config.KindAuthorizationPolicy, ns, "custom\"", `
action: CUSTOM
provider: {name: "prov\"}\n#"}
rules: [{to: [{operation: {paths: ["/custom*"]}}]}]
`),
	)
	keys := []WorkloadKey{{ns, "app=x\"\n#"}, {ns, ""}, {"inj\"\n", "a=b"}}
	pp := preparePair(t, snap, keys, nil, nil)
	for _, k := range keys {
		q, ok := pp.queries[k]
		if !ok {
			t.Fatalf("workload %+v not compiled", k)
		}
		pkg := strings.TrimSuffix(strings.TrimPrefix(q, "data."), ".decision")
		text := pp.modules[compiledFile(pkg)]
		m, err := ast.ParseModuleWithOpts("m.rego", text, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			t.Fatalf("%+v: %v\n%s", k, err, text)
		}
		decisions := 0
		for _, r := range m.Rules {
			name := r.Head.Ref()[0].String()
			if !generatedRule.MatchString(name) {
				t.Errorf("%+v: the module defines %s, which the generator does not write:\n%s", k, name, text)
			}
			if name == "decision" && !r.Default {
				decisions++
			}
		}
		if decisions != 1 {
			t.Errorf("%+v: %d decision rules (an else chain is one):\n%s", k, decisions, text)
		}
		if strings.Contains(text, "\n#\"") || strings.Contains(text, "\nx := 1") || strings.Contains(text, "\ndecision := {\"allowed\": true}") {
			t.Errorf("%+v: a policy's text reached the module raw:\n%s", k, text)
		}
	}
	// Requests that carry the strings themselves.
	ctx := context.Background()
	compared := 0
	for _, k := range keys {
		for _, path := range append(slices.Clone(evil), "/deny\"}", "/deny\n", "/customer", "/other") {
			for _, method := range []string{"GET\"}", "PO\nST", "GET"} {
				for _, hv := range []string{evil[0], "safe"} {
					req := request{method: method, path: path, host: "h", from: "spiffe://cluster.local/ns/x/sa/\"}",
						headers:    map[string]string{"x-\"evil\\\n": hv},
						extensions: map[string]string{ExtensionWorkloadNamespace: k.Namespace, ExtensionWorkloadLabels: k.Labels}}.check()
					name := workloadQueryName(k.Namespace, k.Labels)
					want, err1 := pp.prep.Eval(ctx, Input(req))
					got, err2 := pp.prep.EvalNamed(ctx, name, buildInput(req, partsOf(pp.prep.InputPaths(name))))
					if err1 != nil || err2 != nil {
						t.Fatalf("errors: library %v, compiled %v", err1, err2)
					}
					if d := cmp.Diff(want, got); d != "" {
						t.Errorf("%+v %q %q: (-library +compiled)\n%s", k, method, path, d)
					}
					compared++
				}
			}
		}
	}
	t.Logf("%d decisions compared", compared)
}

// generatedRule matches the names of the rules the generator writes.
var generatedRule = regexp.MustCompile(`^(decision|allowed|added|allowed_reason|(allow|deny|audit|custom)_(matches|reasons)|` +
	`providers|provider_verdicts|provider_denial|custom_denial|custom_effect|rego_(verdicts|reasons|denial)|allowing_verdicts|` +
	`request_principal|request_auth|jwt_[a-z_]+|verdict_[0-9]+|attribute_[0-9]+|p[0-9]+_r[0-9]+(_[a-z]+[0-9]*)*(_[A-Za-z]+)?(_not)?)$`)

// mustJSON is s as a JSON string, which YAML reads too.
func mustJSON(t testing.TB, s string) []byte {
	t.Helper()
	bs, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

// TestCompileDeterministic: the same snapshot gives the same modules and queries,
// whatever the order of the workloads.
func TestCompileDeterministic(t *testing.T) {
	s := newSigners(t)
	for _, sc := range scenarios(t, s) {
		keys := slices.Clone(sc.workloads)
		m1, q1, _ := compile(sc.snap, keys, nil)
		rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		keys = append(keys, keys[0]) // a duplicate
		m2, q2, _ := compile(sc.snap, keys, nil)
		if d := cmp.Diff(m1, m2); d != "" {
			t.Errorf("%s: modules differ:\n%s", sc.name, d)
		}
		if d := cmp.Diff(q1, q2); d != "" {
			t.Errorf("%s: queries differ:\n%s", sc.name, d)
		}
		if len(q1) != len(sc.workloads) {
			t.Errorf("%s: %d of %d workloads compiled", sc.name, len(q1), len(sc.workloads))
		}
	}
}

// TestCompiledModulesStrict: the generated modules compile under OPA's strict
// checks (no unused imports or variables, no deprecated built-ins), as a bundle
// built with `opa build --strict` would need.
func TestCompiledModulesStrict(t *testing.T) {
	s := newSigners(t)
	for _, sc := range scenarios(t, s) {
		p, _ := Policy(sc.snap, nil)
		modules, _, _ := compile(sc.snap, sc.workloads, nil)
		parsed := map[string]*ast.Module{}
		for name, text := range modules {
			m, err := ast.ParseModuleWithOpts(name, text, ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				t.Fatalf("%s: %v", sc.name, err)
			}
			parsed[name] = m
		}
		for name, text := range p.Modules {
			if parsed[name] = ast.MustParseModuleWithOpts(text, ast.ParserOptions{RegoVersion: ast.RegoV1}); parsed[name] == nil {
				t.Fatal(name)
			}
		}
		c := ast.NewCompiler().WithStrict(true)
		if c.Compile(parsed); c.Failed() {
			for _, e := range c.Errors {
				if e.Location == nil || modules[e.Location.File] != "" {
					t.Errorf("%s: %v", sc.name, e)
				}
			}
		}
	}
}

// TestCompiledDecisionsReadLittleInput: the server builds of the input only what
// a compiled decision can read (the differential test checks that the decision
// is the same): for the small policy no header, for the JWT policy the
// Authorization header alone.
func TestCompiledDecisionsReadLittleInput(t *testing.T) {
	s := newSigners(t)
	for _, c := range []struct {
		scenario string
		want     inputParts
	}{
		{"bench-small", inputParts{source: true, http: true, palisade: true}},
		{"bench-jwt", inputParts{http: true, headerNames: []string{"authorization"}, parsedQuery: true, palisade: true}},
	} {
		i := slices.IndexFunc(scenarios(t, s), func(sc compileScenario) bool { return sc.name == c.scenario })
		sc := scenarios(t, s)[i]
		p, _ := Policy(sc.snap, sc.jwks)
		e := NewEngine()
		if err := e.Update(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		k := WorkloadKey{"shop", "app=reviews,version=v1"}
		got, _ := e.Current().InputUse(workloadQueryName(k.Namespace, k.Labels)).(*inputParts)
		if got == nil || !reflect.DeepEqual(*got, c.want) {
			t.Errorf("%s: the compiled decision of %+v reads input parts %+v, want %+v (paths %v)", c.scenario, k, got, c.want,
				e.Current().InputPaths(workloadQueryName(k.Namespace, k.Labels)))
		}
	}
}

// TestWorkloads: the workloads of a snapshot are its endpoints' namespaces and
// labels, inline or WorkloadEntry, distinct and sorted.
func TestWorkloads(t *testing.T) {
	snap := decodeSnapshot(t, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.10, labels: {app: reviews, version: v1}, serviceAccount: reviews}
  - {address: 10.0.0.11, labels: {version: v1, app: reviews}, serviceAccount: reviews}
  - {address: 10.0.0.12, labels: {app: reviews, version: v2}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-vm, namespace: shop}
spec: {address: 10.0.1.5, labels: {app: ratings}, serviceAccount: ratings}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: shop}
spec:
  hosts: [plain.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.2.1}]
`)
	want := []WorkloadKey{{"default", "app=reviews,version=v1"}, {"default", "app=reviews,version=v2"}, {"shop", ""}, {"shop", "app=ratings"}}
	if d := cmp.Diff(want, Workloads(snap)); d != "" {
		t.Errorf("Workloads (-want +got):\n%s", d)
	}
	if Workloads(nil) != nil {
		t.Error("Workloads(nil) is not nil")
	}
}

// TestCompiledModuleShape: the compiled module of the small scenario is the
// specialised module it is meant to be: constants inlined, no walk over the
// policy data nor the library's selection, no call to the decision's helpers
// (written out, they cost less), and the package and file name the rest of
// Palisade expects.
func TestCompiledModuleShape(t *testing.T) {
	snap := decodeSnapshot(t, smallPolicies)
	k := WorkloadKey{"default", "app=reviews"}
	modules, queries, _ := compile(snap, []WorkloadKey{k}, nil)
	q := queries[k]
	if !strings.HasPrefix(q, "data.palisade.compiled.w_") || !strings.HasSuffix(q, ".decision") {
		t.Fatalf("query %q", q)
	}
	pkg := strings.TrimSuffix(strings.TrimPrefix(q, "data."), ".decision")
	text, ok := modules[compiledFile(pkg)]
	if !ok || len(modules) != 2 || modules[typeCheckFile] == "" {
		t.Fatalf("modules %v, want %s and %s", slices.Sorted(maps.Keys(modules)), compiledFile(pkg), typeCheckFile)
	}
	if m, q, _ := compile(snap, []WorkloadKey{{"default", "app=sa"}}, nil); len(m) != 2 || len(q) != 1 {
		t.Errorf("compile of one workload: %d modules, %d queries", len(m), len(q))
	}
	if m, q, _ := compile(snap, nil, nil); len(m) != 0 || len(q) != 0 {
		t.Errorf("compile of no workload: %d modules, %d queries", len(m), len(q))
	}
	for _, want := range []string{
		"package " + pkg + "\n",
		`deny_matches["default/deny-admin"] := 0 if {` + "\n\tstartswith(authz.path, \"/admin\")\n}",
		`authz.source_principal == "cluster.local/ns/default/sa/productpage"`,
		`authz.method == "GET"`,
		`"reason": "allowed by ALLOW policy default/reviews-viewer"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("module lacks %q:\n%s", want, text)
		}
	}
	for _, unwanted := range []string{"data.palisade.config.authorization_policies", "selection.", "first_match", "mesh.denial", "action_reasons", "sort("} {
		if strings.Contains(text, unwanted) {
			t.Errorf("module refers to %s:\n%s", unwanted, text)
		}
	}
}

// ---------------------------------------------------------------------------
// Benchmarks.

// BenchmarkCompiledDecision compares, through Server.Check, the library's
// decision (as BenchmarkDecideSmall) with the compiled one: on the small
// scenario (an allowed request) and on policygen's 100 policies (its cycle of
// variants: allowed, denied by DENY, no ALLOW match, 401).
func BenchmarkCompiledDecision(b *testing.B) {
	set, err := policygen.Generate(100, mustSigner(b))
	if err != nil {
		b.Fatal(err)
	}
	small := request{method: "GET", path: "/reviews/1", host: "reviews:9080", from: "spiffe://cluster.local/ns/default/sa/productpage",
		extensions: map[string]string{ExtensionWorkloadNamespace: "default", ExtensionWorkloadLabels: "app=reviews"}}.check()
	var variants []*authv3.CheckRequest
	for _, v := range set.Variants {
		variants = append(variants, v.Request)
	}
	for _, sc := range []struct {
		name     string
		snap     *mesh.Snapshot
		key      WorkloadKey
		requests []*authv3.CheckRequest
	}{
		{"small", decodeSnapshot(b, smallPolicies), WorkloadKey{"default", "app=reviews"}, []*authv3.CheckRequest{small}},
		{"policygen100", set.Snapshot, WorkloadKey{policygen.Namespace, "app=reviews,version=v1"}, variants},
	} {
		for _, mode := range []string{"library", "compiled"} {
			b.Run(sc.name+"/"+mode, func(b *testing.B) {
				p, _ := Policy(sc.snap, nil)
				p.Modules, p.Queries = maps.Clone(p.Modules), nil
				if mode == "compiled" {
					modules, queries, _ := compile(sc.snap, []WorkloadKey{sc.key}, nil)
					if queries[sc.key] == "" {
						b.Fatal("not compiled")
					}
					maps.Copy(p.Modules, modules)
					p.Queries = map[string]string{workloadQueryName(sc.key.Namespace, sc.key.Labels): queries[sc.key]}
				}
				e := rego.NewEngine(rego.EngineConfig{Query: DecisionQuery, JWTCacheEntries: 1000})
				if err := e.Update(context.Background(), p); err != nil {
					b.Fatal(err)
				}
				s := NewServer(Config{Policies: e})
				ctx := context.Background()
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					s.Check(ctx, sc.requests[i%len(sc.requests)])
					i++
				}
			})
		}
	}
}

func mustSigner(b *testing.B) *policygen.Signer {
	s, err := policygen.NewSigner("k1")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// loggedResult is a Rego decision's result as the decision log writes it, read
// back; nativeResult a native decision's.
func loggedResult(t testing.TB, result any) any {
	var v any
	if err := decodeJSON(appendResult(nil, result), &v); err != nil {
		t.Fatalf("the result is not JSON: %v", err)
	}
	return v
}

func nativeResult(t testing.TB, d Decision) any {
	var v any
	if err := decodeJSON(appendDecision(nil, d), &v); err != nil {
		t.Fatalf("the native result is not JSON: %v", err)
	}
	return v
}
