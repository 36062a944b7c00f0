package authz

import (
	"context"
	"net"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/palisade-mesh/palisade/rego"
)

// engineWith returns an engine whose decision is data.palisade.mesh.decision of the
// given module.
func engineWith(t testing.TB, module string) *rego.Engine {
	t.Helper()
	e := NewEngine()
	if module != "" {
		if err := e.Update(context.Background(), policyOf(module)); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func policyOf(module string) rego.Policy {
	return rego.Policy{Modules: map[string]string{"d.rego": module}, Revision: "r1"}
}

// dial serves s on loopback and returns a client of it.
func dial(t *testing.T, s *Server) authv3.AuthorizationClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// TestCheckResponses: decisions map to Envoy's responses, and every request no
// policy decides is denied, counted by reason.
func TestCheckResponses(t *testing.T) {
	for _, c := range []struct {
		name, module string
		wantCode     code.Code
		wantStatus   int32 // HTTP status of a denial
		wantReason   string
		check        func(t *testing.T, r *authv3.CheckResponse)
	}{
		{name: "no policy loaded", wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "no_policy"},
		{name: "boolean allow", module: "package palisade.mesh\ndecision := true", wantCode: code.Code_OK, wantReason: "policy"},
		{name: "boolean deny", module: "package palisade.mesh\ndecision := false", wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "policy"},
		{name: "undefined", module: "package palisade.mesh\ndecision if input.nothing", wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "undefined"},
		{name: "a builtin error leaves it undefined", module: "package palisade.mesh\ndecision := x if { x := 1 / 0 }", wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "undefined"},
		{name: "conflict is an error", module: "package palisade.mesh\ndecision := 1\ndecision := 2 if true", wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "eval_error"},
		{name: "not a decision", module: `package palisade.mesh
decision := "yes"`, wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "bad_result"},
		{name: "object without allowed", module: `package palisade.mesh
decision := {"http_status": 200}`, wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "bad_result"},
		{name: "bad status", module: `package palisade.mesh
decision := {"allowed": false, "http_status": 99}`, wantCode: code.Code_PERMISSION_DENIED, wantStatus: 403, wantReason: "bad_result"},
		{name: "object deny with status, headers, body", module: `package palisade.mesh
decision := {"allowed": false, "http_status": 401, "body": "who are you", "headers": {"www-authenticate": "Bearer", "x-multi": ["a", "b"]}}`,
			wantCode: code.Code_UNAUTHENTICATED, wantStatus: 401, wantReason: "policy",
			check: func(t *testing.T, r *authv3.CheckResponse) {
				d := r.GetDeniedResponse()
				if d.GetBody() != "who are you" || len(d.GetHeaders()) != 3 || d.GetHeaders()[0].GetHeader().GetKey() != "www-authenticate" {
					t.Errorf("denied response = %v", d)
				}
				if d.GetHeaders()[2].GetAppendAction() == d.GetHeaders()[1].GetAppendAction() {
					t.Errorf("a header's second value must be appended, not overwrite the first")
				}
			}},
		{name: "object allow with headers", module: `package palisade.mesh
decision := {"allowed": true, "headers": {"x-user": input.attributes.request.http.headers["x-user"]}, "request_headers_to_remove": ["authorization"], "response_headers_to_add": {"x-decided": "palisade"}}`,
			wantCode: code.Code_OK, wantReason: "policy",
			check: func(t *testing.T, r *authv3.CheckResponse) {
				ok := r.GetOkResponse()
				if len(ok.GetHeaders()) != 1 || ok.GetHeaders()[0].GetHeader().GetValue() != "alice" ||
					len(ok.GetHeadersToRemove()) != 1 || len(ok.GetResponseHeadersToAdd()) != 1 {
					t.Errorf("ok response = %v", ok)
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			s := NewServer(Config{Policies: engineWith(t, c.module), Metrics: reg})
			client := dial(t, s)
			resp, err := client.Check(context.Background(), request{method: "GET", path: "/", host: "h", headers: map[string]string{"x-user": "alice"}}.check())
			if err != nil {
				t.Fatal(err)
			}
			if got := code.Code(resp.GetStatus().GetCode()); got != c.wantCode {
				t.Fatalf("status %v (%s), want %v", got, resp.GetStatus().GetMessage(), c.wantCode)
			}
			if got := int32(resp.GetDeniedResponse().GetStatus().GetCode()); got != c.wantStatus {
				t.Errorf("HTTP status %d, want %d", got, c.wantStatus)
			}
			decision := "deny"
			if c.wantCode == code.Code_OK {
				decision = "allow"
			}
			if n := testutil.ToFloat64(s.decisions.WithLabelValues(decision, c.wantReason)); n != 1 {
				t.Errorf("palisade_authz_decisions_total{decision=%q,reason=%q} = %v, want 1", decision, c.wantReason, n)
			}
			if c.check != nil {
				c.check(t, resp)
			}
		})
	}
}
