package authz

import (
	"fmt"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
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
