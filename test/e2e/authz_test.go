package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/test/syncbuf"
)

// authzServices are the workloads the authorization scenarios call.
const authzServices = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9, labels: {app: reviews, version: v1}, serviceAccount: reviews}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.10, labels: {app: ratings}, serviceAccount: ratings}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: default}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.11, labels: {app: details}, serviceAccount: details}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: default}
spec:
  hosts: [orders.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.12, labels: {app: orders}, serviceAccount: orders}]
`

// authzPolicies are Istio's documented scenarios (istio.io/latest/docs/tasks/security/authorization):
// allow GET from one service account, deny a path, deny by header, require a JWT,
// and a CUSTOM provider (here a RegoPolicy written for OPA-Envoy) before DENY before
// ALLOW.
const authzPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-header, namespace: default}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-evil]", values: ["true"]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ratings-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [ratings]
    jwks: '%s'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-require-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [raters]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-custom, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: CUSTOM
  provider: {name: opa-envoy}
  rules:
  - to: [{operation: {paths: ["/custom/*", "/admin/custom"]}}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: opa-envoy-provider, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  provider: opa-envoy
  decision: allow
  rego: |
    # Unchanged from an OPA-Envoy deployment: an object decision.
    package envoy.authz

    default allow := {"allowed": false, "http_status": 418, "body": "the provider says no"}

    allow := {"allowed": true, "headers": {"x-checked-by": "opa-envoy"}} if {
    	input.attributes.request.http.headers["x-ok"] == "yes"
    }
---
apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: no-forbidden, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rego: |
    package envoy.authz

    default allow := false

    allow if input.parsed_path[0] != "forbidden"
---
apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: order-limit, namespace: default}
spec:
  selector: {matchLabels: {app: orders}}
  rego: |
    # Reads the request body, which Envoy sends when with_request_body is set.
    package envoy.authz

    default allow := false

    allow if input.attributes.request.http.method == "GET"

    allow if {
    	input.attributes.request.http.method == "POST"
    	input.parsed_body.amount < 100
    }
`

// jwtIssuer signs ES256 tokens whose JWKS the RequestAuthentication carries.
type jwtIssuer struct {
	signer jose.Signer
	jwks   string
}

func newJWTIssuer(t *testing.T) *jwtIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &jwtIssuer{signer: signer, jwks: string(jwks)}
}

func (i *jwtIssuer) token(t *testing.T, aud string, groups []string, ttl time.Duration) string {
	t.Helper()
	claims := jwt.Claims{Issuer: "https://issuer.example", Subject: "alice", Audience: jwt.Audience{aud},
		Expiry: jwt.NewNumericDate(time.Now().Add(ttl)), IssuedAt: jwt.NewNumericDate(time.Now().Add(-time.Minute))}
	tok, err := jwt.Signed(i.signer).Claims(claims).Claims(map[string]any{"groups": groups}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// checkRequest is a CheckRequest as an Envoy sidecar's ext_authz filter sends it
// for a request to a workload: mTLS peer, HTTP attributes and the context
// extensions Palisade's xDS configuration sets.
func checkRequest(from, app, method, path string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{":authority": app + ":9080", ":method": method, ":path": path, ":scheme": "http",
		"user-agent": "curl/8.5.0", "x-request-id": "0d7c5b6e-2f3a-4a1b-9c8d-7e6f5a4b3c2d", "x-forwarded-proto": "http"}
	for k, v := range headers {
		h[k] = v
	}
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: addr("10.0.0.7", 43210), Principal: from},
		Destination: &authv3.AttributeContext_Peer{Address: addr("10.0.0.9", 9080), Principal: "spiffe://cluster.local/ns/default/sa/" + app},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: app + ":9080", Scheme: "http", Protocol: "HTTP/1.1", Headers: h,
		}},
		ContextExtensions: map[string]string{authz.ExtensionWorkloadNamespace: "default", authz.ExtensionWorkloadLabels: "app=" + app},
	}}
}

// withBody adds a JSON body, as Envoy sends it with with_request_body.
func withBody(req *authv3.CheckRequest, body string) *authv3.CheckRequest {
	h := req.Attributes.Request.Http
	h.Body, h.Size = body, int64(len(body))
	h.Headers["content-type"] = "application/json"
	h.Headers["content-length"] = fmt.Sprint(len(body))
	return req
}

func authzClient(t *testing.T, addr string) authv3.AuthorizationClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// waitPolicy waits until the ext_authz endpoint decides by a loaded policy.
func waitPolicy(t *testing.T, c authv3.AuthorizationClient, req *authv3.CheckRequest, want code.Code) {
	t.Helper()
	var last string
	if err := poll(20*time.Second, func() bool {
		resp, err := c.Check(context.Background(), req)
		if err != nil {
			last = err.Error()
			return false
		}
		last = resp.GetStatus().GetMessage()
		return code.Code(resp.GetStatus().GetCode()) == want
	}); err != nil {
		t.Fatalf("the policy never decided %v: last answer %q", want, last)
	}
}

const (
	productpage = "spiffe://cluster.local/ns/default/sa/productpage"
	sleepSA     = "spiffe://cluster.local/ns/default/sa/sleep"
)

// TestAuthzIstioScenarios runs Istio's scenarios with decisions logged (the
// log names what decided) and without (each query gets only the parts of the
// input it reads: the same decisions).
func TestAuthzIstioScenarios(t *testing.T) {
	for _, logged := range []bool{true, false} {
		t.Run(map[bool]string{true: "logged", false: "not logged"}[logged], func(t *testing.T) { istioScenarios(t, logged) })
	}
}

func istioScenarios(t *testing.T, logged bool) {
	issuer := newJWTIssuer(t)
	dir := t.TempDir()
	writeFile(t, dir, "services.yaml", authzServices)
	writeFile(t, dir, "policies.yaml", fmt.Sprintf(authzPolicies, issuer.jwks))
	d := startPalisadedLogging(t, dir, logged)
	c := authzClient(t, d.AuthzAddr)
	waitPolicy(t, c, checkRequest(productpage, "reviews", "GET", "/reviews/1", nil), code.Code_OK)

	good := issuer.token(t, "ratings", []string{"raters"}, time.Hour)
	for _, tc := range []struct {
		name       string
		req        *authv3.CheckRequest
		want       code.Code
		wantStatus int // HTTP status of a denial
		wantIn     string
	}{
		{"allow GET from productpage", checkRequest(productpage, "reviews", "GET", "/reviews/1", nil), code.Code_OK, 0, "reviews-viewer"},
		{"POST from productpage is not allowed", checkRequest(productpage, "reviews", "POST", "/reviews/1", nil), code.Code_PERMISSION_DENIED, 403, "no ALLOW policy matched"},
		{"GET from another service account", checkRequest(sleepSA, "reviews", "GET", "/reviews/1", nil), code.Code_PERMISSION_DENIED, 403, "no ALLOW policy matched"},
		{"plaintext caller", checkRequest("", "reviews", "GET", "/reviews/1", nil), code.Code_PERMISSION_DENIED, 403, "no ALLOW policy matched"},
		{"deny a path, even for an allowed caller", checkRequest(productpage, "reviews", "GET", "/admin/users", nil), code.Code_PERMISSION_DENIED, 403, "deny-admin"},
		{"deny by header", checkRequest(productpage, "reviews", "GET", "/reviews/1", map[string]string{"x-evil": "true"}), code.Code_PERMISSION_DENIED, 403, "deny-header"},
		{"JWT required: none", checkRequest(sleepSA, "ratings", "GET", "/ratings/1", nil), code.Code_PERMISSION_DENIED, 403, "no ALLOW policy matched"},
		{"JWT required: valid", checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + good}), code.Code_OK, 0, "ratings-require-jwt"},
		{"JWT from the access_token parameter", checkRequest(sleepSA, "ratings", "GET", "/ratings/1?access_token="+good, nil), code.Code_OK, 0, "ratings-require-jwt"},
		{"JWT without the claim", checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + issuer.token(t, "ratings", []string{"readers"}, time.Hour)}), code.Code_PERMISSION_DENIED, 403, "no ALLOW policy matched"},
		{"JWT for another audience", checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + issuer.token(t, "other", []string{"raters"}, time.Hour)}), code.Code_UNAUTHENTICATED, 401, "ratings-jwt"},
		{"expired JWT", checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + issuer.token(t, "ratings", []string{"raters"}, -time.Minute)}), code.Code_UNAUTHENTICATED, 401, "ratings-jwt"},
		{"JWT signed by another key", checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + newJWTIssuer(t).token(t, "ratings", []string{"raters"}, time.Hour)}), code.Code_UNAUTHENTICATED, 401, "ratings-jwt"},
		{"CUSTOM provider denies first", checkRequest(sleepSA, "details", "GET", "/custom/x", nil), code.Code_PERMISSION_DENIED, 418, "details-custom"},
		{"CUSTOM provider allows", checkRequest(sleepSA, "details", "GET", "/custom/x", map[string]string{"x-ok": "yes"}), code.Code_OK, 0, "opa-envoy-provider"},
		{"CUSTOM before DENY", checkRequest(sleepSA, "details", "GET", "/admin/custom", nil), code.Code_PERMISSION_DENIED, 418, "details-custom"},
		{"DENY after CUSTOM allowed", checkRequest(sleepSA, "details", "GET", "/admin/custom", map[string]string{"x-ok": "yes"}), code.Code_PERMISSION_DENIED, 403, "deny-admin"},
		{"CUSTOM not matched: no provider asked", checkRequest(sleepSA, "details", "GET", "/plain", nil), code.Code_OK, 0, "no-forbidden"},
		{"OPA-Envoy RegoPolicy denies", checkRequest(sleepSA, "details", "GET", "/forbidden/x", nil), code.Code_PERMISSION_DENIED, 403, "no-forbidden"},
		{"odd path: encoded dot segments", checkRequest(productpage, "reviews", "GET", "/reviews/%2e%2e/admin", nil), code.Code_OK, 0, ""},
		{"odd path: bad escape", checkRequest(productpage, "reviews", "GET", "/reviews/%zz", nil), code.Code_OK, 0, ""},
		{"odd path: dot segments into a denied path", checkRequest(productpage, "reviews", "GET", "/admin/../admin/x", nil), code.Code_PERMISSION_DENIED, 403, "deny-admin"},
		{"body: a small order", withBody(checkRequest(sleepSA, "orders", "POST", "/orders", nil), `{"item":"book","amount":20}`), code.Code_OK, 0, "order-limit"},
		{"body: a large order", withBody(checkRequest(sleepSA, "orders", "POST", "/orders", nil), `{"item":"car","amount":20000}`), code.Code_PERMISSION_DENIED, 403, "order-limit"},
		{"body: not JSON", withBody(checkRequest(sleepSA, "orders", "POST", "/orders", nil), `{"amount":`), code.Code_PERMISSION_DENIED, 403, "order-limit"},
		{"huge header", checkRequest(productpage, "reviews", "GET", "/reviews/1", map[string]string{"x-big": strings.Repeat("a", 1<<20)}), code.Code_OK, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Attributes.Request.Http.Headers["x-request-id"] = tc.name // finds its log entry
			resp, err := c.Check(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			got := code.Code(resp.GetStatus().GetCode())
			if got != tc.want {
				t.Fatalf("decision %v (%s), want %v", got, resp.GetStatus().GetMessage(), tc.want)
			}
			if got != code.Code_OK {
				if s := int(resp.GetDeniedResponse().GetStatus().GetCode()); s != tc.wantStatus {
					t.Errorf("HTTP status %d, want %d", s, tc.wantStatus)
				}
			}
			if tc.name == "CUSTOM provider allows" {
				if h := resp.GetOkResponse().GetHeaders(); len(h) != 1 || h[0].GetHeader().GetValue() != "opa-envoy" {
					t.Errorf("the provider's headers are not passed on: %v", h)
				}
			}
			if logged && tc.wantIn != "" && !strings.Contains(explainOf(t, d, tc.req), tc.wantIn) {
				t.Errorf("the decision log does not name %q for this request", tc.wantIn)
			}
		})
	}
}

// explainOf returns the result the decision log recorded for a request (found by
// its x-request-id): the explanation of its decision.
func explainOf(t *testing.T, d *daemon, req *authv3.CheckRequest) string {
	t.Helper()
	id := req.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]
	var found string
	poll(5*time.Second, func() bool {
		data, _ := os.ReadFile(d.DecisionLog)
		for _, line := range strings.Split(string(data), "\n") {
			var e struct {
				Input struct {
					Attributes struct {
						Request struct {
							HTTP struct{ Headers map[string]string }
						}
					}
				}
				Result json.RawMessage
			}
			if json.Unmarshal([]byte(line), &e) == nil && e.Input.Attributes.Request.HTTP.Headers["x-request-id"] == id {
				found = string(e.Result)
				return true
			}
		}
		return false
	})
	return found
}

// TestAuthzDecisionLogMasksSecrets: tokens and cookies never reach the log.
func TestAuthzDecisionLogMasksSecrets(t *testing.T) {
	issuer := newJWTIssuer(t)
	dir := t.TempDir()
	writeFile(t, dir, "services.yaml", authzServices)
	writeFile(t, dir, "policies.yaml", fmt.Sprintf(authzPolicies, issuer.jwks))
	d := startPalisaded(t, dir)
	c := authzClient(t, d.AuthzAddr)
	tok := issuer.token(t, "ratings", []string{"raters"}, time.Hour)
	req := checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + tok, "cookie": "session=s3cr3t"})
	waitPolicy(t, c, req, code.Code_OK)
	if err := poll(5*time.Second, func() bool {
		data, _ := os.ReadFile(d.DecisionLog)
		return strings.Contains(string(data), "ratings-require-jwt")
	}); err != nil {
		t.Fatal("the decision is not in the log")
	}
	data, _ := os.ReadFile(d.DecisionLog)
	for _, secret := range []string{tok, "s3cr3t", strings.Split(tok, ".")[2]} {
		if strings.Contains(string(data), secret) {
			t.Fatalf("the decision log holds a secret")
		}
	}
	if !strings.Contains(string(data), `"authorization":"**MASKED**"`) {
		t.Errorf("the authorization header is not shown masked")
	}
}

// TestAuthzBadRegoKeepsLastGood: a RegoPolicy that does not compile is reported
// with its line, and the policy in force does not change.
func TestAuthzBadRegoKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "services.yaml", authzServices)
	good := `apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: gate, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rego: |
    package gate

    allow if input.attributes.request.http.method == "GET"
`
	writeFile(t, dir, "gate.yaml", good)
	d := startPalisaded(t, dir)
	c := authzClient(t, d.AuthzAddr)
	get, post := checkRequest(sleepSA, "details", "GET", "/", nil), checkRequest(sleepSA, "details", "POST", "/", nil)
	waitPolicy(t, c, get, code.Code_OK)
	waitPolicy(t, c, post, code.Code_PERMISSION_DENIED)

	bad := strings.Replace(good, `allow if input.attributes.request.http.method == "GET"`, "allow if {\n      input.x ==\n    }", 1)
	writeFile(t, dir, "gate.yaml", bad)
	if err := poll(10*time.Second, func() bool {
		_, body, _ := d.get("/debug/diagnostics")
		return strings.Contains(body, "gate.yaml") && strings.Contains(body, "spec.rego") && strings.Contains(body, "line 5")
	}); err != nil {
		_, body, _ := d.get("/debug/diagnostics")
		t.Fatalf("the broken module is not reported with its line:\n%s", body)
	}
	for _, tc := range []struct {
		req  *authv3.CheckRequest
		want code.Code
	}{{get, code.Code_OK}, {post, code.Code_PERMISSION_DENIED}} {
		resp, err := c.Check(context.Background(), tc.req)
		if err != nil || code.Code(resp.GetStatus().GetCode()) != tc.want {
			t.Errorf("after a broken update: %v, %v; want the last good policy's %v", resp.GetStatus(), err, tc.want)
		}
	}
}

// TestAuthzExplain: palisadectl authz explain names the policy and rule that
// decided, for a request described on the command line.
func TestAuthzExplain(t *testing.T) {
	issuer := newJWTIssuer(t)
	dir := t.TempDir()
	writeFile(t, dir, "services.yaml", authzServices)
	writeFile(t, dir, "policies.yaml", fmt.Sprintf(authzPolicies, issuer.jwks))
	d := startPalisaded(t, dir)
	waitPolicy(t, authzClient(t, d.AuthzAddr), checkRequest(productpage, "reviews", "GET", "/", nil), code.Code_OK)

	explain := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctlBin, append([]string{"authz", "explain", "--palisaded", d.MonAddr}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("palisadectl authz explain %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := explain("--from", productpage, "--to", "reviews", "--method", "GET", "--path", "/admin/x")
	for _, want := range []string{"DENY (HTTP 403)", "default/deny-admin", "reviews.default.svc.cluster.local:9080", "app=reviews"} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks %q:\n%s", want, out)
		}
	}
	out = explain("--from", productpage, "--to", "reviews.default.svc.cluster.local:9080", "--path", "/reviews/1")
	if !strings.HasPrefix(out, "ALLOW (HTTP 200)") || !strings.Contains(out, "default/reviews-viewer") {
		t.Errorf("explanation of an allowed request:\n%s", out)
	}
	out = explain("--from", sleepSA, "--to", "ratings", "--jwt", issuer.token(t, "ratings", []string{"raters"}, time.Hour))
	if !strings.HasPrefix(out, "ALLOW") || !strings.Contains(out, "default/ratings-require-jwt") {
		t.Errorf("explanation with a JWT:\n%s", out)
	}
	out = explain("--from", sleepSA, "--to", "details", "--path", "/custom/a", "--header", "x-ok=yes", "-o", "json")
	var e authz.Explanation
	if err := json.Unmarshal([]byte(out), &e); err != nil || !e.Allowed || e.Namespace != "default" {
		t.Errorf("JSON explanation: %v\n%s", err, out)
	}
	if o, err := exec.Command(ctlBin, "authz", "explain", "--palisaded", d.MonAddr, "--to", "nosuch").CombinedOutput(); err == nil || !strings.Contains(string(o), "no service") {
		t.Errorf("an unknown service: %v\n%s", err, o)
	}
}

// TestAgentAuthzFollowsBundles: palisade-agent's local ext_authz decides by the
// signed bundle palisaded serves, and follows a policy change.
func TestAgentAuthzFollowsBundles(t *testing.T) {
	issuer := newJWTIssuer(t)
	dir := t.TempDir()
	writeFile(t, dir, "services.yaml", authzServices)
	writeFile(t, dir, "policies.yaml", fmt.Sprintf(authzPolicies, issuer.jwks))
	d := startPalisaded(t, dir)
	local := freeAddr(t)
	startAgent(t, d, "default", "reviews", time.Hour,
		"--policy-bundle-url", "http://"+d.BundleAddr+"/bundles/palisade",
		"--policy-bundle-key", d.DataDir+"/policy/bundle-signing-key.pub.pem",
		"--authz-address", local)
	c := authzClient(t, local)
	get := checkRequest(productpage, "reviews", "GET", "/reviews/1", nil)
	waitPolicy(t, c, get, code.Code_OK)
	for _, tc := range []struct {
		req  *authv3.CheckRequest
		want code.Code
	}{
		{checkRequest(productpage, "reviews", "GET", "/admin/x", nil), code.Code_PERMISSION_DENIED},
		{checkRequest(sleepSA, "reviews", "GET", "/reviews/1", nil), code.Code_PERMISSION_DENIED},
		{checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + issuer.token(t, "ratings", []string{"raters"}, time.Hour)}), code.Code_OK},
		{checkRequest(sleepSA, "details", "GET", "/custom/x", nil), code.Code_PERMISSION_DENIED},
	} {
		resp, err := c.Check(context.Background(), tc.req)
		if err != nil || code.Code(resp.GetStatus().GetCode()) != tc.want {
			t.Errorf("%s %s from %s: %v %v, want %v", tc.req.Attributes.Request.Http.Method, tc.req.Attributes.Request.Http.Path,
				tc.req.Attributes.Source.Principal, resp.GetStatus(), err, tc.want)
		}
	}
	// A new DENY policy reaches the agent as a new bundle.
	writeFile(t, dir, "deny-get.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-reviews-1, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/reviews/1]}}]}]
`)
	waitPolicy(t, c, get, code.Code_PERMISSION_DENIED)
}

// TestStockOPAEnforcesPalisadeBundle: a stock OPA, configured with palisaded's
// bundle service and signing key, decides OPA-Envoy inputs (no input.palisade, the
// workload only in the context extensions) as palisaded's own endpoint does.
func TestStockOPAEnforcesPalisadeBundle(t *testing.T) {
	opaBin := filepath.Join(moduleRoot, ".cache", "bin", "opa")
	if _, err := os.Stat(opaBin); err != nil {
		t.Fatalf("the opa CLI is missing (%v): run ./scripts/opa.sh (make test does)", err)
	}
	issuer := newJWTIssuer(t)
	dir := t.TempDir()
	writeFile(t, dir, "services.yaml", authzServices)
	writeFile(t, dir, "policies.yaml", fmt.Sprintf(authzPolicies, issuer.jwks))
	d := startPalisaded(t, dir)
	key, err := os.ReadFile(filepath.Join(d.DataDir, "policy", "bundle-signing-key.pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]any{
		"services": map[string]any{"palisade": map[string]any{"url": "http://" + d.BundleAddr}},
		"bundles": map[string]any{"palisade": map[string]any{"service": "palisade", "resource": "bundles/palisade",
			"signing": map[string]any{"keyid": "palisade"}, "polling": map[string]any{"min_delay_seconds": 1, "max_delay_seconds": 2}}},
		"keys": map[string]any{"palisade": map[string]any{"algorithm": "ES256", "key": string(key)}},
	})
	cfgFile := filepath.Join(t.TempDir(), "opa.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	out := &syncbuf.Buffer{}
	cmd := exec.Command(opaBin, "run", "--server", "--skip-version-check", "--addr", addr, "--config-file", cfgFile)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("--- opa output ---\n%s", out.String())
		}
	})
	decide := func(req *authv3.CheckRequest) (bool, error) {
		in, err := authz.InputViaJSON(req)
		if err != nil {
			return false, err
		}
		body, _ := json.Marshal(map[string]any{"input": in})
		resp, err := http.Post("http://"+addr+"/v1/data/palisade/mesh/decision", "application/json", strings.NewReader(string(body)))
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var r struct {
			Result *struct{ Allowed bool }
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Result == nil {
			return false, fmt.Errorf("no decision (status %s, %v)", resp.Status, err)
		}
		return r.Result.Allowed, nil
	}
	allowedReq := checkRequest(productpage, "reviews", "GET", "/reviews/1", nil)
	if err := poll(20*time.Second, func() bool { ok, err := decide(allowedReq); return err == nil && ok }); err != nil {
		t.Fatalf("stock OPA never allowed what palisaded allows: %v", err)
	}
	c := authzClient(t, d.AuthzAddr)
	for _, req := range []*authv3.CheckRequest{
		allowedReq,
		checkRequest(productpage, "reviews", "GET", "/admin/x", nil),
		checkRequest(sleepSA, "reviews", "GET", "/reviews/1", nil),
		checkRequest(productpage, "reviews", "GET", "/reviews/1", map[string]string{"x-evil": "true"}),
		checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + issuer.token(t, "ratings", []string{"raters"}, time.Hour)}),
		checkRequest(sleepSA, "ratings", "GET", "/ratings/1", map[string]string{"authorization": "Bearer " + issuer.token(t, "other", []string{"raters"}, time.Hour)}),
		checkRequest(sleepSA, "details", "GET", "/custom/x", map[string]string{"x-ok": "yes"}),
		checkRequest(sleepSA, "details", "GET", "/forbidden", nil),
	} {
		got, err := decide(req)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if want := resp.GetOkResponse() != nil; got != want {
			h := req.Attributes.Request.Http
			t.Errorf("%s %s from %q: stock OPA allowed=%v, palisaded allowed=%v", h.Method, h.Path, req.Attributes.Source.Principal, got, want)
		}
	}
}
