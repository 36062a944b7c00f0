package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/filesource"
)

// A scenario is a config directory of policies and the cycle of requests sent to
// the workload they protect (reviews v1 in namespace shop, policygen's workload).
type scenario struct {
	name, about string
	configDir   string
	keyFile     string // the key the tokens are signed with
	variants    []policygen.Variant
}

// scenarioNames are the scenarios -scenarios may name; policies100 is
// policygen.Generate's mesh, written to a temporary config directory.
var scenarioNames = []string{"small", "jwt", "policies100"}

const generatedPolicies = 100

// newScenario prepares a scenario for the orchestrator: testdata holds the
// committed ones; dir receives the generated one.
func newScenario(name, testdata, dir string) (*scenario, error) {
	switch name {
	case "small", "jwt":
		return loadScenario(name, filepath.Join(testdata, name), filepath.Join(testdata, "jwt-signing-key.pem"))
	case "policies100":
		signer, err := policygen.NewSigner("bench")
		if err != nil {
			return nil, err
		}
		set, err := policygen.Generate(generatedPolicies, signer)
		if err != nil {
			return nil, err
		}
		sc := &scenario{name: name, configDir: filepath.Join(dir, name), keyFile: filepath.Join(dir, name+"-key.pem"), variants: set.Variants}
		sc.about = about(name, set.Snapshot)
		if err := os.MkdirAll(sc.configDir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(sc.configDir, "policies.yaml"), set.YAML, 0o644); err != nil {
			return nil, err
		}
		return sc, os.WriteFile(sc.keyFile, signer.KeyPEM(), 0o600)
	}
	return nil, fmt.Errorf("unknown scenario %q (have %v)", name, scenarioNames)
}

// loadScenario is a scenario whose policies are in configDir and whose tokens are
// signed with the key in keyFile; child processes make it again from the same
// files, and get the same requests.
func loadScenario(name, configDir, keyFile string) (*scenario, error) {
	pemBytes, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w (run from the repository root, or set -testdata)", err)
	}
	signer, err := policygen.ParseSigner(pemBytes, "bench")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	sc := &scenario{name: name, configDir: configDir, keyFile: keyFile}
	switch name {
	case "small":
		sc.variants = smallVariants(signer)
	case "jwt":
		if sc.variants, err = jwtVariants(signer); err != nil {
			return nil, err
		}
	case "policies100":
		set, err := policygen.Generate(generatedPolicies, signer)
		if err != nil {
			return nil, err
		}
		sc.variants = set.Variants
	default:
		return nil, fmt.Errorf("unknown scenario %q", name)
	}
	snap, err := loadSnapshot(configDir)
	if err != nil {
		return nil, err
	}
	sc.about = about(name, snap)
	return sc, nil
}

func about(name string, snap *mesh.Snapshot) string {
	s := plural(len(snap.AuthorizationPolicies), "AuthorizationPolicy", "AuthorizationPolicies")
	if n := len(snap.RequestAuthentications); n > 0 {
		s += ", " + plural(n, "RequestAuthentication", "RequestAuthentications")
	}
	if name == "policies100" {
		applying := 0
		for _, p := range snap.AuthorizationPolicies {
			if p.AppliesTo(policygen.Namespace, policygen.WorkloadLabels) {
				applying++
			}
		}
		s += fmt.Sprintf(" (%d apply to the workload called)", applying)
	}
	return s
}

// loadSnapshot reads a config directory as palisaded does and builds its snapshot;
// any error in it is fatal (the benchmark's policies must all be in force).
func loadSnapshot(dir string) (*mesh.Snapshot, error) {
	objs, diags, err := filesource.Load(dir)
	if err != nil {
		return nil, err
	}
	snap := mesh.Build(1, objs)
	for _, d := range slices.Concat(diags, snap.Diagnostics) {
		if d.Severity == config.SeverityError {
			return nil, fmt.Errorf("%s: %s", dir, d)
		}
	}
	if len(snap.AuthorizationPolicies) == 0 {
		return nil, fmt.Errorf("%s: no AuthorizationPolicy", dir)
	}
	return snap, nil
}

// smallVariants are the requests of testdata/small: half are allowed. Every
// request carries a token, as an application's requests usually do, though no
// RequestAuthentication reads it here.
func smallVariants(signer *policygen.Signer) []policygen.Variant {
	token := signer.UserToken("alice", "reviewers")
	productpage := policygen.Principal(policygen.Namespace, "productpage")
	ratings := policygen.Principal(policygen.Namespace, "ratings")
	return variants([]variantSpec{
		{"productpage GET /api", true, policygen.Call{Method: "GET", Path: "/api/reviews/1", Source: productpage, Token: token}},
		{"productpage GET /api?query", true, policygen.Call{Method: "GET", Path: "/api/reviews/2?page=2&sort=date", Source: productpage, Token: token}},
		{"productpage POST /api/reviews", true, policygen.Call{Method: "POST", Path: "/api/reviews", Source: productpage, Token: token}},
		{"ratings GET /api (wrong principal)", false, policygen.Call{Method: "GET", Path: "/api/reviews/1", Source: ratings, Token: token}},
		{"productpage DELETE /api (method)", false, policygen.Call{Method: "DELETE", Path: "/api/reviews/1", Source: productpage, Token: token}},
		{"productpage GET /admin (DENY policy)", false, policygen.Call{Method: "GET", Path: "/admin/stats", Source: productpage, Token: token}},
		{"productpage HEAD /api", true, policygen.Call{Method: "HEAD", Path: "/api/reviews", Source: productpage, Token: token}},
		{"plaintext GET /api (no principal)", false, policygen.Call{Method: "GET", Path: "/api/reviews/1", Token: token}},
	})
}

// jwtVariants are the requests of testdata/jwt, all from productpage: valid
// tokens with and without the groups the ALLOW policy wants, no token, and tokens
// the RequestAuthentication rejects (401): forged, expired, for another audience.
func jwtVariants(signer *policygen.Signer) ([]policygen.Variant, error) {
	impostor, err := policygen.NewSigner(signer.KeyID)
	if err != nil {
		return nil, err
	}
	expired := policygen.Claims("alice", "reviewers")
	expired["exp"] = 1700003600
	otherAudience := policygen.Claims("alice", "reviewers")
	otherAudience["aud"] = []any{"ratings"}
	alice := signer.UserToken("alice", "reviewers")
	productpage := policygen.Principal(policygen.Namespace, "productpage")
	call := func(method, path, token string) policygen.Call {
		return policygen.Call{Method: method, Path: path, Source: productpage, Token: token}
	}
	return variants([]variantSpec{
		{"reviewer GET /api", true, call("GET", "/api/reviews/1", alice)},
		{"admin POST /api/reviews", true, call("POST", "/api/reviews", signer.UserToken("bob", "admins", "reviewers"))},
		{"guest GET /api (claim)", false, call("GET", "/api/reviews/1", signer.UserToken("carol", "guests"))},
		{"no token GET /api", false, call("GET", "/api/reviews/1", "")},
		{"forged token (401)", false, call("GET", "/api/reviews/1", impostor.UserToken("alice", "admins"))},
		{"expired token (401)", false, call("GET", "/api/reviews/1", signer.Token(expired))},
		{"token for another audience (401)", false, call("GET", "/api/reviews/1", signer.Token(otherAudience))},
		{"reviewer DELETE /api (method)", false, call("DELETE", "/api/reviews/1", alice)},
		{"other reviewer GET /api?query", true, call("GET", "/api/reviews/3?page=1", signer.UserToken("dave", "reviewers"))},
	}), nil
}

type variantSpec struct {
	name    string
	allowed bool
	call    policygen.Call
}

func variants(specs []variantSpec) []policygen.Variant {
	out := make([]policygen.Variant, len(specs))
	for i, s := range specs {
		out[i] = policygen.Variant{Name: s.name, Allowed: s.allowed, Request: policygen.CheckRequest(s.call)}
	}
	return out
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
