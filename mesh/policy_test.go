package mesh_test

import (
	"fmt"
	"strings"
	"testing"

	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// selectorSpec writes the spec fields of a selector: none when selector is "",
// else selecting "k=v".
func selectorSpec(selector string) string {
	if selector == "" {
		return ""
	}
	k, v, _ := strings.Cut(selector, "=")
	return fmt.Sprintf("selector: {matchLabels: {%s: %s}}, ", k, v)
}

// authz writes an AuthorizationPolicy with one rule; a CUSTOM one names provider
// "opa".
func authz(ns, name, selector, action string) string {
	provider := ""
	if action == "CUSTOM" {
		provider = "provider: {name: opa}, "
	}
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec: {%s%saction: %s, rules: [{}]}\n---\n",
		name, ns, selectorSpec(selector), provider, action)
}

// rego writes a RegoPolicy allowing everything, with the given provider ("": none).
func rego(ns, name, selector, provider string) string {
	if provider != "" {
		provider = "provider: " + provider + ", "
	}
	return fmt.Sprintf("apiVersion: policy.palisade.dev/v1alpha1\nkind: RegoPolicy\nmetadata: {name: %s, namespace: %s}\nspec: {%s%srego: \"package p\\nallow := true\\n\"}\n---\n",
		name, ns, selectorSpec(selector), provider)
}

func requestAuthn(ns, name string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: %s, namespace: %s}\nspec: {jwtRules: [{issuer: %s}]}\n---\n", name, ns, name)
}

// A workload needs ext_authz when a CUSTOM AuthorizationPolicy or a RegoPolicy
// selects it, as Istio selects workloads for policies.
func TestNeedsExtAuthz(t *testing.T) {
	const root = mesh.RootNamespace
	tests := []struct {
		name     string
		policies string
		want     bool // for a workload of namespace shop labelled app=reviews
	}{
		{"nothing configured", "", false},
		{"CUSTOM in the root namespace without selector", authz(root, "ext", "", "CUSTOM"), true},
		{"CUSTOM in the root namespace with a matching selector", authz(root, "ext", "app=reviews", "CUSTOM"), true},
		{"CUSTOM in the root namespace, selector mismatch", authz(root, "ext", "app=ratings", "CUSTOM"), false},
		{"CUSTOM in the same namespace without selector", authz("shop", "ext", "", "CUSTOM"), true},
		{"CUSTOM in the same namespace with a matching selector", authz("shop", "ext", "app=reviews", "CUSTOM"), true},
		{"CUSTOM in the same namespace, selector mismatch", authz("shop", "ext", "app=ratings", "CUSTOM"), false},
		{"CUSTOM in another namespace", authz("other", "ext", "", "CUSTOM"), false},
		{"CUSTOM in another namespace with a matching selector", authz("other", "ext", "app=reviews", "CUSTOM"), false},
		{"ALLOW, DENY and AUDIT only", authz(root, "a", "", "ALLOW") + authz("shop", "b", "", "DENY") + authz("shop", "c", "app=reviews", "AUDIT"), false},
		{"RequestAuthentication only", requestAuthn("shop", "jwt"), false},
		{"RegoPolicy in the same namespace", rego("shop", "r", "", ""), true},
		{"RegoPolicy provider with a matching selector", rego("shop", "r", "app=reviews", "opa"), true},
		{"RegoPolicy in the root namespace with a matching selector", rego(root, "r", "app=reviews", ""), true},
		{"RegoPolicy in the root namespace, selector mismatch", rego(root, "r", "app=ratings", ""), false},
		{"RegoPolicy in another namespace", rego("other", "r", "", ""), false},
		{"RegoPolicy, selector mismatch", rego("shop", "r", "app=ratings", ""), false},
		{"ALLOW here, CUSTOM elsewhere", authz("shop", "a", "", "ALLOW") + authz("other", "ext", "", "CUSTOM"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := build(t, tt.policies)
			if got := snap.NeedsExtAuthz("shop", map[string]string{"app": "reviews", "version": "v1"}); got != tt.want {
				t.Errorf("NeedsExtAuthz = %v, want %v", got, tt.want)
			}
		})
	}
	var nilSnap *mesh.Snapshot
	if nilSnap.NeedsExtAuthz("shop", nil) {
		t.Error("a nil snapshot needs ext_authz")
	}
}

// The workload of the root namespace itself is selected by the root namespace's
// policies, and a selector picks it there too.
func TestPolicySelectsInTheRootNamespace(t *testing.T) {
	const root = mesh.RootNamespace
	for _, tt := range []struct {
		policyNS, selector, ns string
		want                   bool
	}{
		{root, "", root, true},
		{root, "app=gw", root, true},
		{root, "app=other", root, false},
		{"shop", "", root, false},
		{"shop", "", "shop", true},
	} {
		var sel map[string]string
		if k, v, ok := strings.Cut(tt.selector, "="); ok {
			sel = map[string]string{k: v}
		}
		if got := mesh.PolicySelects(tt.policyNS, sel, tt.ns, map[string]string{"app": "gw"}); got != tt.want {
			t.Errorf("PolicySelects(%s, %v, %s) = %v, want %v", tt.policyNS, sel, tt.ns, got, tt.want)
		}
	}
}

func TestBuildPolicies(t *testing.T) {
	snap := build(t, authz("shop", "b", "", "DENY")+authz("default", "z", "", "ALLOW")+authz("shop", "a", "app=reviews", "CUSTOM")+
		requestAuthn("shop", "jwt")+requestAuthn("default", "jwt")+
		rego("shop", "r", "app=reviews", "opa")+
		"apiVersion: policy.palisade.dev/v1alpha1\nkind: RegoPolicy\nmetadata: {name: d, namespace: shop}\nspec: {decision: verdict, rego: \"package p\\nverdict := {\\\"allowed\\\": true}\\n\"}\n")
	keys := func(n int, key func(int) config.Key) string {
		var out []string
		for i := range n {
			k := key(i)
			out = append(out, k.Namespace+"/"+k.Name)
		}
		return strings.Join(out, " ")
	}
	if got := keys(len(snap.AuthorizationPolicies), func(i int) config.Key { return snap.AuthorizationPolicies[i].Key }); got != "default/z shop/a shop/b" {
		t.Errorf("AuthorizationPolicies = %s", got)
	}
	if got := keys(len(snap.RequestAuthentications), func(i int) config.Key { return snap.RequestAuthentications[i].Key }); got != "default/jwt shop/jwt" {
		t.Errorf("RequestAuthentications = %s", got)
	}
	if got := keys(len(snap.RegoPolicies), func(i int) config.Key { return snap.RegoPolicies[i].Key }); got != "shop/d shop/r" {
		t.Errorf("RegoPolicies = %s", got)
	}
	custom := snap.AuthorizationPolicies[1]
	if custom.Key.Kind != config.KindAuthorizationPolicy || custom.Spec.Action != security.AuthorizationPolicy_CUSTOM ||
		custom.Spec.GetProvider().GetName() != "opa" || custom.Source.File != "t.yaml" || custom.Source.Index != 2 {
		t.Errorf("CUSTOM policy = %+v", custom)
	}
	if ra := snap.RequestAuthentications[1]; ra.Spec.JwtRules[0].Issuer != "jwt" || ra.Key.Kind != config.KindRequestAuthentication {
		t.Errorf("RequestAuthentication = %+v", ra)
	}
	d, r := snap.RegoPolicies[0], snap.RegoPolicies[1]
	if d.Decision() != "verdict" || r.Decision() != config.DefaultDecision || r.Spec.Provider != "opa" || !strings.HasPrefix(r.Spec.Rego, "package p\n") {
		t.Errorf("RegoPolicies = %+v, %+v", d.Spec, r.Spec)
	}
	if !r.AppliesTo("shop", map[string]string{"app": "reviews"}) || r.AppliesTo("shop", nil) || !d.AppliesTo("shop", nil) {
		t.Error("RegoPolicy.AppliesTo does not follow the selectors")
	}
	if !custom.AppliesTo("shop", map[string]string{"app": "reviews"}) || custom.AppliesTo("other", map[string]string{"app": "reviews"}) {
		t.Error("AuthorizationPolicy.AppliesTo does not follow the selector")
	}
	if !snap.RequestAuthentications[1].AppliesTo("shop", nil) || snap.RequestAuthentications[1].AppliesTo("default", nil) {
		t.Error("RequestAuthentication.AppliesTo does not follow the namespace")
	}
	// The CUSTOM policy's provider is RegoPolicy r's: nothing to report.
	if len(snap.Diagnostics) != 0 {
		t.Errorf("diagnostics = %v", snap.Diagnostics)
	}
}

// Providers are checked both ways: a CUSTOM policy whose provider no RegoPolicy
// has denies what it matches, a provider RegoPolicy that no CUSTOM policy names is
// never consulted.
func TestPolicyProvidersThatDoNotMeetAreReported(t *testing.T) {
	snap := build(t, authz("shop", "ext", "", "CUSTOM")+rego("shop", "lonely", "", "elsewhere")+rego("shop", "plain", "", ""))
	var got []string
	for _, d := range snap.Diagnostics {
		if d.Severity != config.SeverityWarning {
			t.Errorf("severity of %v", d)
		}
		got = append(got, d.String())
	}
	want := []string{
		`warning: t.yaml[doc 0] AuthorizationPolicy shop/ext: spec.provider.name: no RegoPolicy has provider "opa"; the requests this policy matches are denied`,
		`warning: t.yaml[doc 1] RegoPolicy shop/lonely: spec.provider: no CUSTOM AuthorizationPolicy names provider "elsewhere"; this RegoPolicy is never consulted`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diagnostics:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Unchanged policies keep their identity from one snapshot to the next; a changed
// one is new.
func TestBuildFromReusesUnchangedPolicies(t *testing.T) {
	decode := func(file, yaml string) []config.Object {
		t.Helper()
		objs, diags := config.Decode(file, []byte(yaml))
		if len(diags) > 0 {
			t.Fatal(diags)
		}
		return objs
	}
	a := decode("a.yaml", authz("shop", "a", "", "CUSTOM")+requestAuthn("shop", "jwt")+rego("shop", "r", "", "opa"))
	b := decode("b.yaml", authz("shop", "b", "", "ALLOW")+requestAuthn("shop", "jwt2")+rego("shop", "s", "", ""))
	first := mesh.Build(1, append(a, b...))
	b2 := decode("b.yaml", authz("shop", "b", "", "DENY")+requestAuthn("shop", "jwt2")+rego("shop", "s", "app=x", ""))
	second := mesh.BuildFrom(first, 2, append(a, b2...))

	if first.AuthorizationPolicies[0] != second.AuthorizationPolicies[0] || first.RequestAuthentications[0] != second.RequestAuthentications[0] ||
		first.RegoPolicies[0] != second.RegoPolicies[0] {
		t.Error("unchanged policies were rebuilt")
	}
	if first.AuthorizationPolicies[1] == second.AuthorizationPolicies[1] || second.AuthorizationPolicies[1].Spec.Action != security.AuthorizationPolicy_DENY {
		t.Error("the changed AuthorizationPolicy was not rebuilt")
	}
	// Decoded again, an identical document is a new object: rebuilt too.
	if first.RequestAuthentications[1] == second.RequestAuthentications[1] || first.RegoPolicies[1] == second.RegoPolicies[1] {
		t.Error("the policies decoded again were reused")
	}
	if second.RegoPolicies[1].Spec.GetSelector().GetMatchLabels()["app"] != "x" {
		t.Error("the changed RegoPolicy is not the new one")
	}
}
