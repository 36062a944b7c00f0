package policygen_test

import (
	"context"
	"testing"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/rego"
)

func TestExtensionsAgreeWithAuthz(t *testing.T) {
	if policygen.ExtensionWorkloadNamespace != authz.ExtensionWorkloadNamespace || policygen.ExtensionWorkloadLabels != authz.ExtensionWorkloadLabels {
		t.Error("policygen's context extension names differ from authz's")
	}
	if got := authz.EncodeLabels([]string{"app", "version"}, policygen.WorkloadLabels); got != "app=reviews,version=v1" {
		t.Errorf("labels extension = %q", got)
	}
}

// TestGenerate: the generated mesh decodes, has the policies asked for, and
// decides every variant as intended.
func TestGenerate(t *testing.T) {
	signer, err := policygen.NewSigner("bench")
	if err != nil {
		t.Fatal(err)
	}
	set, err := policygen.Generate(100, signer)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(set.Snapshot.RequestAuthentications); n != 1 {
		t.Errorf("%d RequestAuthentications", n)
	}
	applying := 0
	for _, p := range set.Snapshot.AuthorizationPolicies {
		if p.AppliesTo(policygen.Namespace, policygen.WorkloadLabels) {
			applying++
		}
	}
	if applying != set.Selecting {
		t.Errorf("%d policies apply to the workload, want %d", applying, set.Selecting)
	}
	policy, diags := authz.Policy(set.Snapshot, nil)
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	engine := rego.NewEngine(rego.EngineConfig{Query: authz.DecisionQuery, JWTCacheEntries: 100})
	if err := engine.Update(context.Background(), policy); err != nil {
		t.Fatal(err)
	}
	allowed := 0
	for i, v := range set.Variants {
		policygen.Renew(v.Request, uint64(i))
		if _, err := authz.InputViaJSON(v.Request); err != nil {
			t.Errorf("%s: InputViaJSON: %v", v.Name, err)
		}
		result, err := engine.Current().Eval(context.Background(), authz.Input(v.Request))
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		d, _ := result.(map[string]any)
		if got, _ := d["allowed"].(bool); got != v.Allowed {
			t.Errorf("%s: allowed = %v, want %v (reason %v)", v.Name, got, v.Allowed, d["reason"])
		}
		if v.Allowed {
			allowed++
		}
	}
	if allowed == 0 || allowed == len(set.Variants) {
		t.Errorf("%d of %d variants allowed: want a mix", allowed, len(set.Variants))
	}
}
