package caserver_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-mesh/palisade/identity"
	"github.com/palisade-mesh/palisade/identity/caserver"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func newServer(t *testing.T) (*caserver.Server, *identity.CA, *identity.Tokens) {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.NewTokens(identity.TokensConfig{Path: dir + "/tokens.json"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := caserver.New(caserver.Config{CA: ca, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	return srv, ca, tokens
}

// A stock SPIFFE federation client fetches this trust domain's bundle from the
// bundle endpoint, authenticating the endpoint as palisaded (https_spiffe).
func TestBundleEndpoint(t *testing.T) {
	srv, ca, _ := newServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs, err := srv.ServeBundleEndpoint(l)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := federation.FetchBundle(ctx, td, "https://"+l.Addr().String(), federation.WithSPIFFEAuth(ca.Bundle(), caserver.ServerID(td)))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(ca.Bundle()) {
		t.Error("the bundle endpoint serves another bundle than the CA's")
	}
	// The endpoint is not another identity: a client expecting one is refused.
	_, err = federation.FetchBundle(ctx, td, "https://"+l.Addr().String(), federation.WithSPIFFEAuth(ca.Bundle(), spiffeid.RequireFromPath(td, "/ns/x/sa/y")))
	if err == nil {
		t.Error("fetch succeeded while expecting another endpoint identity")
	}
}

func TestAdminCreatesTokens(t *testing.T) {
	_, _, tokens := newServer(t)
	h := caserver.AdminHandler(td, tokens)
	post := func(body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/identity/tokens", strings.NewReader(body)))
		return rec
	}
	rec := post(`{"spiffeID": "spiffe://cluster.local/ns/default/sa/reviews", "ttl": "5m"}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var created caserver.CreateTokenResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &created); err != nil {
		t.Fatal(err)
	}
	id, err := tokens.Redeem(created.Token)
	if err != nil || id.String() != "spiffe://cluster.local/ns/default/sa/reviews" {
		t.Fatalf("the created token redeems as %v, %v", id, err)
	}
	if d := time.Until(created.ExpiresAt); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("expires in %v, want 5m", d)
	}

	for body, want := range map[string]string{
		`{"spiffeID": "spiffe://cluster.local/palisaded", "ttl": "5m"}`:           "must have the form",
		`{"spiffeID": "spiffe://example.org/ns/default/sa/x", "ttl": "5m"}`:       "not in trust domain",
		`{"spiffeID": "not an id", "ttl": "5m"}`:                                  "SPIFFE ID",
		`{"spiffeID": "spiffe://cluster.local/ns/default/sa/x", "ttl": "soon"}`:   "ttl",
		`{"spiffeID": "spiffe://cluster.local/ns/default/sa/x", "ttl": "-1m"}`:    "",
		`{"spiffeID": "spiffe://cluster.local/ns/default/sa/x", "lifetime": "1"}`: "unknown field",
		`{`: "bad request body",
	} {
		rec := post(body)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("%s: status %d %q, want 400 with %q", body, rec.Code, rec.Body, want)
		}
	}
}

// CreateToken, the admin API's client, gets a token over the Unix socket and
// reports a refusal with palisaded's reason.
func TestCreateTokenOverTheAdminSocket(t *testing.T) {
	_, _, tokens := newServer(t)
	socket := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: caserver.AdminHandler(td, tokens)}
	go func() { _ = hs.Serve(l) }()
	defer hs.Close()
	ctx := context.Background()
	created, err := caserver.CreateToken(ctx, socket, caserver.CreateTokenRequest{SPIFFEID: "spiffe://cluster.local/ns/a/sa/b", TTL: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := tokens.Redeem(created.Token); err != nil || id.String() != "spiffe://cluster.local/ns/a/sa/b" {
		t.Fatalf("created token redeems as %v, %v", id, err)
	}
	_, err = caserver.CreateToken(ctx, socket, caserver.CreateTokenRequest{SPIFFEID: "spiffe://cluster.local/palisaded", TTL: "1m"})
	if err == nil || !strings.Contains(err.Error(), "palisaded refused") || !strings.Contains(err.Error(), "must have the form") {
		t.Fatalf("refusal reported as %v", err)
	}
}
