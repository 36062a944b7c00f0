package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/format"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/policies"
	"github.com/palisade-mesh/palisade/rego"
)

// JWKSSource gives the JWKS palisaded fetched for a RequestAuthentication's jwksUri.
type JWKSSource interface {
	JWKS(uri string) (jwks string, ok bool)
}

// Policy translates a snapshot's authorization objects into what the engine
// evaluates: the mesh library, users' RegoPolicy modules (each in a package of its
// own, policies/README.md) and the data document data.palisade.config. It is a pure
// function of the snapshot and the fetched JWKS. A RegoPolicy whose module cannot be
// placed is left out and reported; its decision is then undefined, which denies.
func Policy(snap *mesh.Snapshot, jwks JWKSSource) (rego.Policy, []config.Diagnostic) {
	modules := policies.Library()
	var diags []config.Diagnostic
	authzPolicies := map[string][]any{}
	for _, p := range snap.AuthorizationPolicies {
		spec := protoJSON(p.Spec)
		// Istio's default action, made explicit so the library need not know it.
		spec["action"] = p.Spec.GetAction().String()
		authzPolicies[p.Key.Namespace] = append(authzPolicies[p.Key.Namespace], entry(p.Key, spec))
	}
	requestAuthns := map[string][]any{}
	for _, p := range snap.RequestAuthentications {
		spec := protoJSON(withFetchedJWKS(p.Spec, jwks))
		requestAuthns[p.Key.Namespace] = append(requestAuthns[p.Key.Namespace], entry(p.Key, spec))
	}
	regoPolicies := map[string][]any{}
	for _, p := range snap.RegoPolicies {
		name, text, err := UserModule(p.Key.Namespace, p.Key.Name, p.Spec.GetRego())
		if err != nil {
			diags = append(diags, config.Diagnostic{Severity: config.SeverityError, Source: p.Source, Object: p.Key, Message: err.Error()})
			continue
		}
		modules[name] = text
		spec := map[string]any{"decision": p.Decision()}
		if sel := p.Spec.GetSelector().GetMatchLabels(); len(sel) > 0 {
			spec["selector"] = map[string]any{"matchLabels": stringsToAny(sel)}
		}
		if p.Spec.GetProvider() != "" {
			spec["provider"] = p.Spec.GetProvider()
		}
		regoPolicies[p.Key.Namespace] = append(regoPolicies[p.Key.Namespace], entry(p.Key, spec))
	}
	queries, natives := map[string]string{}, nativeDecisions{}
	if len(snap.AuthorizationPolicies)+len(snap.RequestAuthentications)+len(snap.RegoPolicies) > 0 {
		compiled, byWorkload, native := compile(snap, compiledWorkloads(snap), jwks)
		maps.Copy(modules, compiled)
		for k, q := range byWorkload {
			queries[workloadQueryName(k.Namespace, k.Labels)] = q
		}
		for k, d := range native {
			natives[workloadQueryName(k.Namespace, k.Labels)] = d
		}
	}
	data := map[string]any{"palisade": map[string]any{"config": map[string]any{
		"root_namespace":          mesh.RootNamespace,
		"authorization_policies":  byNamespace(authzPolicies),
		"request_authentications": byNamespace(requestAuthns),
		"rego_policies":           byNamespace(regoPolicies),
	}}}
	return rego.Policy{Modules: modules, Data: data, Queries: queries, Native: natives, Revision: revision(modules, data)}, diags
}

// MaxCompiledWorkloads bounds the workloads whose decisions are compiled: preparing
// a compiled decision costs milliseconds, so a huge mesh compiles the first ones
// (in Workloads order) and the others are decided by the mesh library, equally but
// more slowly.
const MaxCompiledWorkloads = 256

// compiledWorkloads are the snapshot's workloads that at least one policy applies
// to (the others need no compiled decision: the library's is as cheap), at most
// MaxCompiledWorkloads.
func compiledWorkloads(snap *mesh.Snapshot) []WorkloadKey {
	var out []WorkloadKey
	for _, k := range Workloads(snap) {
		if len(out) == MaxCompiledWorkloads {
			break
		}
		if anyApplies(snap, k) {
			out = append(out, k)
		}
	}
	return out
}

func anyApplies(snap *mesh.Snapshot, k WorkloadKey) bool {
	labels := decodeLabels(k.Labels)
	for _, p := range snap.AuthorizationPolicies {
		if p.AppliesTo(k.Namespace, labels) {
			return true
		}
	}
	for _, p := range snap.RequestAuthentications {
		if p.AppliesTo(k.Namespace, labels) {
			return true
		}
	}
	for _, p := range snap.RegoPolicies {
		if p.AppliesTo(k.Namespace, labels) {
			return true
		}
	}
	return false
}

// workloadQueryName names a workload's compiled decision in rego.Policy.Queries:
// its namespace and labels as the context extensions carry them (neither contains a
// newline).
func workloadQueryName(namespace, labels string) string { return namespace + "\n" + labels }

// WorkloadQuery names the query that decides req: the compiled decision of the
// workload its context extensions name (rego.Prepared.EvalNamed falls back to the
// mesh library's decision when there is none).
func WorkloadQuery(req *authv3.CheckRequest) string {
	ext := req.GetAttributes().GetContextExtensions()
	return workloadQueryName(ext[ExtensionWorkloadNamespace], ext[ExtensionWorkloadLabels])
}

// UserModule places a RegoPolicy's module in the package of its own,
// palisade.regopolicies[NS][NAME], and returns its file name and text.
func UserModule(ns, name, text string) (file, module string, err error) {
	file = fmt.Sprintf("regopolicies/%s/%s.rego", ns, name)
	m, err := ast.ParseModuleWithOpts(file, text, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		return "", "", err
	}
	m.Package.Path = ast.Ref{ast.DefaultRootDocument, ast.StringTerm("palisade"), ast.StringTerm("regopolicies"), ast.StringTerm(ns), ast.StringTerm(name)}
	out, err := format.AstWithOpts(m, format.Opts{RegoVersion: ast.RegoV1})
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", file, err)
	}
	return file, string(out), nil
}

func entry(k config.Key, spec map[string]any) any {
	return map[string]any{"metadata": map[string]any{"namespace": k.Namespace, "name": k.Name}, "spec": spec}
}

// withFetchedJWKS returns the spec with each jwksUri's fetched JWKS inline; a rule
// whose JWKS is not (yet) fetched gets none, so its tokens are rejected.
func withFetchedJWKS(spec *security.RequestAuthentication, src JWKSSource) *security.RequestAuthentication {
	need := false
	for _, r := range spec.GetJwtRules() {
		need = need || (r.GetJwksUri() != "" && r.GetJwks() == "")
	}
	if !need || src == nil {
		return spec
	}
	spec = proto.Clone(spec).(*security.RequestAuthentication) // the snapshot is read only
	for _, r := range spec.JwtRules {
		if r.JwksUri != "" && r.Jwks == "" {
			r.Jwks, _ = src.JWKS(r.JwksUri)
		}
	}
	return spec
}

// protoJSON is a spec in Istio's JSON form (as in the YAML), as generic data.
func protoJSON(m proto.Message) map[string]any {
	bs, err := protojson.Marshal(m)
	if err != nil {
		panic(err) // a decoded spec always marshals
	}
	var v map[string]any
	if err := json.Unmarshal(bs, &v); err != nil {
		panic(err)
	}
	return v
}

func byNamespace(m map[string][]any) map[string]any {
	out := make(map[string]any, len(m))
	for ns, list := range m {
		out[ns] = list
	}
	return out
}

func stringsToAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// revision names a policy by its content, so equal policies have equal revisions.
func revision(modules map[string]string, data map[string]any) string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(modules)) {
		fmt.Fprintf(h, "%d:%s%d:%s", len(name), name, len(modules[name]), modules[name])
	}
	bs, _ := json.Marshal(data) // encoding/json sorts map keys
	h.Write(bs)
	return hex.EncodeToString(h.Sum(nil)[:12])
}
