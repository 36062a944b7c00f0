package authz

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/rego"
)

// TestNativeJWTFollowsTheClock: a token accepted once is cached, but the cache
// never outlives the token: it is refused before its nbf and from its exp on,
// whatever was decided before (the clock goes both ways here, as an injected one
// may). The differential test covers the rest of the JWT semantics against the
// library, with the real clock.
func TestNativeJWTFollowsTheClock(t *testing.T) {
	s := newSigners(t)
	snap := decodeSnapshot(t, fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: %s
    audiences: [%s]
    jwks: '%s'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users, namespace: default}
spec:
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
`, policygen.Issuer, policygen.Audience, s.main.JWKS()))
	k := WorkloadKey{"default", "app=reviews"}
	_, _, natives := compile(snap, []WorkloadKey{k}, nil)
	d := natives[k]
	if d == nil || d.jwt == nil {
		t.Fatalf("no native decision with JWT for %+v: %v", k, natives)
	}
	nbf, exp := int64(2_000_000_000), int64(2_000_003_600)
	claims := policygen.Claims("alice")
	claims["nbf"], claims["exp"] = nbf, exp
	token := s.main.Token(claims)
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/", Host: "reviews", Headers: map[string]string{"authorization": "Bearer " + token}},
	}}}
	for _, c := range []struct {
		at     int64 // seconds
		status int
	}{
		{nbf - 10, 401}, {nbf + 10, 200}, {nbf + 20, 200}, {nbf - 5, 401}, {nbf + 30, 200},
		{exp - 1, 200}, {exp, 401}, {exp + 100, 401}, {nbf + 40, 200},
	} {
		got := d.decide(req, time.Unix(c.at, 0))
		if got.HTTPStatus != c.status {
			t.Errorf("at nbf%+d s: status %d (%s), want %d", c.at-nbf, got.HTTPStatus, got.Reason, c.status)
		}
	}
}

// FuzzNativeDecision: on any request, the native decisions decide as the mesh
// library (the differential test, with fuzzed fields instead of random ones):
// every natively decided workload of the e2e, features and edge scenarios,
// fuzzed method, path, host, peer identity and addresses, and one of the
// differential test's tokens (or none) in the Authorization header, a query
// parameter, or the fuzzed header. Strings are made valid UTF-8, as gRPC's
// decoding of a CheckRequest guarantees.
func FuzzNativeDecision(f *testing.F) {
	s := newSigners(f)
	tokens := newRequestGen(s, 1).tokens
	type target struct {
		pp preparedPair
		k  WorkloadKey
	}
	var targets []target
	for _, sc := range scenarios(f, s) {
		if sc.name != "e2e" && sc.name != "features" && sc.name != "edge" {
			continue
		}
		pp := preparePair(f, sc.snap, append(slices.Clone(sc.workloads), sc.fallback...), sc.jwks, nil)
		for _, k := range sc.workloads {
			if pp.natives[k] != nil {
				targets = append(targets, target{pp, k})
			}
		}
	}
	f.Add(uint8(0), "GET", "/api/v1/items?token=x&a=1", "api.features.svc:8080", "spiffe://cluster.local/ns/features/sa/web", "10.1.2.3", "x-forwarded-for", "203.0.113.9, 10.0.0.1", uint8(0), uint8(0))
	f.Add(uint8(3), "POST", "/admin/../x", "[::1]:9080", "spiffe://cluster.local/ns/default/sa/productpage", "::1", "x-partner-auth", "Token ", uint8(4), uint8(2))
	f.Add(uint8(7), "", "", "", "", "", "cookie", "session=", uint8(9), uint8(1))
	f.Add(uint8(11), "DELETE", "/debug/pprof", "API.Features:80", "cluster.local/ns/x/sa/y", "not-an-ip", "x-envoy-external-address", " 192.168.0.1 ", uint8(255), uint8(3))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, which uint8, method, path, host, principal, ip, hk, hv string, token, place uint8) {
		valid := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
		tg := targets[int(which)%len(targets)]
		headers := map[string]string{":path": valid(path), "user-agent": "fuzz"}
		if hk != "" {
			headers[strings.ToLower(valid(hk))] = valid(hv)
		}
		if i := int(token); i < len(tokens) {
			switch place % 3 {
			case 0:
				headers["authorization"] = "Bearer " + tokens[i]
			case 1:
				sep := "?"
				if strings.Contains(path, "?") {
					sep = "&"
				}
				path += sep + "access_token=" + tokens[i] + "&token=" + tokens[i]
			default:
				if hk != "" {
					headers[strings.ToLower(valid(hk))] = valid(hv) + tokens[i]
				}
			}
		}
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Address: socket(valid(ip), 40000), Principal: valid(principal)},
			Destination: &authv3.AttributeContext_Peer{Address: socket("10.0.0.9", 8080)},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: valid(method), Path: valid(path), Host: valid(host), Scheme: "http", Headers: headers,
			}},
			ContextExtensions: map[string]string{ExtensionWorkloadNamespace: tg.k.Namespace, ExtensionWorkloadLabels: tg.k.Labels},
		}}
		want, err := tg.pp.prep.Eval(ctx, Input(req))
		if err != nil {
			t.Fatalf("the library: %v", err)
		}
		got := tg.pp.natives[tg.k].decide(req, time.Now())
		if diff := cmp.Diff(loggedResult(t, want), nativeResult(t, got)); diff != "" {
			t.Fatalf("workload %+v, %s %q host %q from %q ip %q headers %q:\n(-library +native)\n%s", tg.k, method, path, host, principal, ip, headers, diff)
		}
	})
}

// TestNativePanicDenies: a native decision that panics denies the request as an
// evaluation error, counted, instead of ending the server.
func TestNativePanicDenies(t *testing.T) {
	broken := &nativeDecision{allow: []nativePolicy{{id: "default/broken", rules: []nativeRule{{match: []matcher{
		func(*nativeRequest) bool { panic("a bug") },
	}}}}}}
	k := WorkloadKey{"default", "app=reviews"}
	p := &rego.Prepared{Policy: rego.Policy{Native: nativeDecisions{workloadQueryName(k.Namespace, k.Labels): broken}, Revision: "r"}}
	s := NewServer(Config{Policies: fixedPolicy{p}})
	req := request{method: "GET", path: "/", host: "reviews", extensions: map[string]string{ExtensionWorkloadNamespace: k.Namespace, ExtensionWorkloadLabels: k.Labels}}.check()
	resp, err := s.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDeniedResponse() == nil || !strings.Contains(resp.GetStatus().GetMessage(), "a bug") {
		t.Errorf("response %v: want a denial naming the panic", resp)
	}
	if n := testutil.ToFloat64(s.decisions.WithLabelValues("deny", string(FailureEval))); n != 1 {
		t.Errorf("%v evaluation errors counted, want 1", n)
	}
}

type fixedPolicy struct{ p *rego.Prepared }

func (f fixedPolicy) Current() *rego.Prepared { return f.p }
