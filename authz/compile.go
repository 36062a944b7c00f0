package authz

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// This file compiles, per workload, the policies that apply to it into a Rego
// module whose rule `decision` equals data.palisade.mesh.decision for that
// workload's requests (as Istio compiles AuthorizationPolicies into one Envoy RBAC
// filter per workload). The library walks the policy data on every request: it
// selects the policies, reads every field of every rule and builds the reasons.
// The compiled module does the selection here, in Go (mesh's AppliesTo, the same
// rule as selection.rego), and writes each rule out with its constants, so a
// request only pays for the comparisons themselves.
//
// What the library does once per request whatever the policies (the request's
// attributes: source_principal, path, host_forms, ...) and RegoPolicies' verdicts
// (mesh.verdict, effect, ...) are not rewritten: the module calls them in the
// library, so there is one implementation of those semantics. What is rewritten
// mirrors the library rule for rule: authz.rego's matching, decision.rego's steps,
// whose objects (denial(), allowed, action_reasons()) are written out because calls
// and comprehensions are what a decision costs, and jwt.rego's token handling for
// the jwtRules that apply (the library selects them and reads their fields on
// every request, which cost more than the rest of a decision). TestCompiledDecisionEqualsLibrary checks the two against
// each other on random requests, deep-equal decision for decision.

// WorkloadKey is a called workload as the ext_authz server learns it from the
// context extensions: its namespace and labels in EncodeLabels form.
type WorkloadKey struct{ Namespace, Labels string }

// compiledRoot is the package under which compiled decisions live: under
// "palisade", so that they fit the bundles' roots.
const compiledRoot = "palisade.compiled"

// Workloads returns the distinct workloads of the snapshot (namespace and labels of
// every service endpoint, inline or WorkloadEntry), sorted, the ones compile is
// given.
func Workloads(snap *mesh.Snapshot) []WorkloadKey {
	if snap == nil {
		return nil
	}
	seen := map[WorkloadKey]bool{}
	var out []WorkloadKey
	for _, svc := range snap.Services {
		for _, ep := range svc.Endpoints {
			k := WorkloadKey{ep.Namespace, EncodeLabels(mesh.SortedKeys(ep.Labels), ep.Labels)}
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	slices.SortFunc(out, compareKeys)
	return out
}

func compareKeys(a, b WorkloadKey) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Labels, b.Labels))
}

// compile returns, for each workload it can compile, a Rego module (file name →
// text) whose rule `decision` (at the returned query, e.g.
// "data.palisade.compiled.w_<hash>.decision") is equal to data.palisade.mesh.decision
// for every input whose input.palisade.workload is that workload, given the data
// Policy builds for the same snapshot, and for those that use neither a
// RegoPolicy nor a CUSTOM policy, a native decision equal to it (native.go).
// Workloads using something it does not compile (see selectPolicies) are left out:
// they use the library. The modules and queries are a pure function of the
// arguments (same snapshot, same text).
func compile(snap *mesh.Snapshot, workloads []WorkloadKey, jwks JWKSSource) (modules map[string]string, queries map[WorkloadKey]string, natives map[WorkloadKey]*nativeDecision) {
	modules, queries, natives = map[string]string{}, map[WorkloadKey]string{}, map[WorkloadKey]*nativeDecision{}
	if snap == nil {
		return modules, queries, natives
	}
	tokens := newJWTCache() // shared by the native decisions
	placed := placedRegoPolicies(snap)
	keys := slices.Clone(workloads)
	slices.SortFunc(keys, compareKeys)
	keys = slices.Compact(keys)
	owner := map[string]WorkloadKey{} // package → workload, to detect hash collisions
	for _, k := range keys {
		pkg := compiledPackage(k)
		if _, taken := owner[pkg]; taken {
			continue // two keys with the same short hash: the later one uses the library
		}
		w, err := selectPolicies(snap, placed, k, jwks)
		if err != nil {
			continue
		}
		text, err := compileWorkload(w, k, pkg)
		if err != nil {
			continue
		}
		owner[pkg] = k
		modules[compiledFile(pkg)] = text
		queries[k] = "data." + pkg + ".decision"
		if d, ok := compileNative(w, tokens); ok {
			natives[k] = d
		}
	}
	if len(modules) > 0 {
		modules[typeCheckFile] = typeCheckModule
	}
	return modules, queries, natives
}

// typeCheckModule is no decision but a workaround for the cost of compiling many
// compiled modules together. OPA's type checker (v1.22) finds the rules that a
// `with` could replace, walking every module, for each rule whose type holds an
// empty collection; it keeps the answer only when there is some such rule. Every
// compiled decision has rules with {} or [] in their type, so compiling N of them
// costs N² walks (1000 policies, 233 workloads: 95 s instead of 7 s). The rule
// below, never evaluated, replaces a rule with `with`, so the answer is kept.
const (
	typeCheckFile   = "compiled/typecheck.rego"
	typeCheckModule = `# Code generated by authz.compile. DO NOT EDIT.
#
# Not a decision: with this rule's "with", OPA's type checker looks once, not once
# per rule, for the rules a "with" replaces (authz/compile.go, typeCheckModule).
package palisade.compiled

replaces_with if {
	data.palisade.compiled.replaced with data.palisade.compiled.replaced as true
}

replaced := false
`
)

// compiledPackage is the package of a workload's decision: a short hash of the key,
// since namespaces and labels are not Rego identifiers.
func compiledPackage(k WorkloadKey) string {
	sum := sha256.Sum256([]byte(k.Namespace + "\x00" + k.Labels))
	return compiledRoot + ".w_" + hex.EncodeToString(sum[:6])
}

func compiledFile(pkg string) string {
	return "compiled/" + strings.TrimPrefix(pkg, compiledRoot+".") + ".rego"
}

// decodeLabels reads EncodeLabels' form as the ext_authz server does (labelsTerm):
// the labels a compiled decision's requests carry in input.palisade.workload.
func decodeLabels(s string) map[string]string {
	m := map[string]string{}
	for pair := range strings.SplitSeq(s, ",") {
		if k, v, ok := strings.Cut(pair, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m
}

// placedRegoPolicies are the RegoPolicies whose module Policy places (the others
// are left out of its data, so they select no workload).
func placedRegoPolicies(snap *mesh.Snapshot) map[config.Key]bool {
	placed := map[config.Key]bool{}
	for _, p := range snap.RegoPolicies {
		if _, _, err := UserModule(p.Key.Namespace, p.Key.Name, p.Spec.GetRego()); err == nil {
			placed[p.Key] = true
		}
	}
	return placed
}

// ---------------------------------------------------------------------------
// What applies to one workload.

// applied is an applicable AuthorizationPolicy with its "NS/NAME" and its index in
// the module (its rules' helper rules are named p<index>_...).
type applied struct {
	id    string
	index int
	spec  *security.AuthorizationPolicy
}

// regoApplied is an applicable RegoPolicy: its "NS/NAME", provider ("" for none)
// and the rule of the module that holds its verdict (verdict_<index>).
type regoApplied struct {
	id, namespace, name, provider, decision string
	verdict                                 string
}

// workloadPolicies are the policies that apply to one workload, in the orders the
// library reports them.
type workloadPolicies struct {
	policies    []applied     // AuthorizationPolicies, by "NS/NAME"
	jwtPolicies []string      // "NS/NAME" of the RequestAuthentications
	jwtRules    []jwtRule     // their rules, in the library's order of [NS/NAME, index], with the JWKS Policy puts in the data
	regos       []regoApplied // RegoPolicies (placed ones), by "NS/NAME"
}

// selectPolicies returns what applies to workload k. It fails, and the workload
// uses the library, when a policy that applies uses what the compilers do not
// know: an action other than ALLOW, DENY, AUDIT and CUSTOM, a source or operation
// field that authz.rego does not read (serviceAccounts, trustDomains, and whatever
// later versions of the API add), or a condition key authz.rego does not read. The
// library's answer for those is "never matches", a rule the compilers would have
// to track as the library grows; the library itself is the safer judge of them.
func selectPolicies(snap *mesh.Snapshot, placed map[config.Key]bool, k WorkloadKey, jwks JWKSSource) (workloadPolicies, error) {
	var w workloadPolicies
	labels := decodeLabels(k.Labels)
	for _, p := range snap.AuthorizationPolicies {
		if p.AppliesTo(k.Namespace, labels) {
			if err := checkSupported(p.Spec); err != nil {
				return w, fmt.Errorf("%s/%s: %w", p.Key.Namespace, p.Key.Name, err)
			}
			w.policies = append(w.policies, applied{id: p.Key.Namespace + "/" + p.Key.Name, spec: p.Spec})
		}
	}
	// Reasons list policies sorted by "NS/NAME" as a string, which is not always
	// the snapshot's (namespace, name) order ("a-b/x" < "a/x").
	slices.SortFunc(w.policies, func(a, b applied) int { return cmp.Compare(a.id, b.id) })
	for i := range w.policies {
		w.policies[i].index = i
	}
	for _, p := range snap.RequestAuthentications {
		if p.AppliesTo(k.Namespace, labels) {
			w.jwtPolicies = append(w.jwtPolicies, p.Key.Namespace+"/"+p.Key.Name)
			for i, r := range withFetchedJWKS(p.Spec, jwks).GetJwtRules() {
				w.jwtRules = append(w.jwtRules, jwtRule{id: p.Key.Namespace + "/" + p.Key.Name, index: i, rule: r})
			}
		}
	}
	slices.SortFunc(w.jwtRules, func(a, b jwtRule) int { return cmp.Or(cmp.Compare(a.id, b.id), cmp.Compare(a.index, b.index)) })
	for _, p := range snap.RegoPolicies {
		if placed[p.Key] && p.AppliesTo(k.Namespace, labels) {
			w.regos = append(w.regos, regoApplied{
				id: p.Key.Namespace + "/" + p.Key.Name, namespace: p.Key.Namespace, name: p.Key.Name,
				provider: p.Spec.GetProvider(), decision: p.Decision(),
			})
		}
	}
	slices.SortFunc(w.regos, func(a, b regoApplied) int { return cmp.Compare(a.id, b.id) })
	for i := range w.regos {
		w.regos[i].verdict = fmt.Sprintf("verdict_%d", i)
	}
	return w, nil
}

// compileWorkload writes the module of a workload with the policies w that apply
// to it.
func compileWorkload(w workloadPolicies, k WorkloadKey, pkg string) (string, error) {
	g := &generator{jwtRules: w.jwtRules, jwtPolicies: w.jwtPolicies, imports: map[string]bool{}, attrs: map[string]string{}}
	g.module(w.policies, w.regos)
	if g.err != nil {
		return "", g.err
	}
	text := g.text(k, pkg)
	// A safety net: a module that does not parse (a bug here) must not replace the
	// library.
	if _, err := ast.ParseModuleWithOpts(compiledFile(pkg), text, ast.ParserOptions{RegoVersion: ast.RegoV1}); err != nil {
		return "", err
	}
	return text, nil
}

// The fields authz.rego reads, by their JSON names (policies/README.md: the data
// is the spec in Istio's JSON form).
var (
	sourceFields = []string{
		"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
		"namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
	}
	operationFields = []string{"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}
	attributeKeys   = []string{
		"source.ip", "remote.ip", "destination.ip", "destination.port", "source.namespace", "source.principal",
		"request.auth.principal", "request.auth.audiences", "request.auth.presenter", "connection.sni",
	}
)

// checkSupported reports what of a policy the generator does not compile (see
// compileWorkload).
func checkSupported(spec *security.AuthorizationPolicy) error {
	switch spec.GetAction() {
	case security.AuthorizationPolicy_ALLOW, security.AuthorizationPolicy_DENY,
		security.AuthorizationPolicy_AUDIT, security.AuthorizationPolicy_CUSTOM:
	default:
		return fmt.Errorf("action %v is not compiled", spec.GetAction())
	}
	for _, r := range spec.GetRules() {
		for _, f := range r.GetFrom() {
			if err := onlyFields(f.GetSource(), sourceFields); err != nil {
				return err
			}
		}
		for _, t := range r.GetTo() {
			if err := onlyFields(t.GetOperation(), operationFields); err != nil {
				return err
			}
		}
		for _, c := range r.GetWhen() {
			if _, _, ok := attributeOf(c.GetKey()); !ok {
				return fmt.Errorf("condition key %q is not compiled", c.GetKey())
			}
		}
	}
	return nil
}

// onlyFields fails when m has a field set (as protojson would write it) that is not
// one of known.
func onlyFields(m proto.Message, known []string) error {
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil
	}
	var err error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(known, fd.JSONName()) {
			err = fmt.Errorf("field %s is not compiled", fd.JSONName())
		}
		return err == nil
	})
	return err
}

// attribute kinds, as authz.rego's attribute(key) gives them.
type attrKind int

const (
	kindString attrKind = iota // Istio's string matching
	kindIP                     // IPs and CIDRs
	kindPort                   // exact port numbers (strings)
)

// attributeOf returns how condition key's values are read: the kind, and for
// request.headers[NAME] and request.auth.claims[A][B]... the header name (lower
// case) or the claim's path. ok is false for a key authz.rego does not read.
func attributeOf(key string) (kind attrKind, arg []string, ok bool) {
	switch key {
	case "source.ip", "remote.ip", "destination.ip":
		return kindIP, nil, true
	case "destination.port":
		return kindPort, nil, true
	}
	if slices.Contains(attributeKeys, key) {
		return kindString, nil, true
	}
	// The library cuts the name with substring() in code points; the prefix and the
	// "]" are ASCII, so byte offsets cut the same.
	if strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]") {
		return kindString, []string{strings.ToLower(key[len("request.headers[") : len(key)-1])}, true
	}
	if strings.HasPrefix(key, "request.auth.claims[") && strings.HasSuffix(key, "]") {
		return kindString, strings.Split(key[len("request.auth.claims["):len(key)-1], "]["), true
	}
	return 0, nil, false
}

// ---------------------------------------------------------------------------
// The generator.

type generator struct {
	jwtPolicies []string        // "NS/NAME" of the RequestAuthentications that apply
	jwtRules    []jwtRule       // their rules
	body        strings.Builder // the rules, after the header
	helpers     strings.Builder // helper rules (disjunctions), written last
	imports     map[string]bool // library packages referred to
	attrs       map[string]string
	uses        map[string]bool // local attribute rules referred to
	err         error
}

// requestAuthn says that a RequestAuthentication applies.
func (g *generator) requestAuthn() bool { return len(g.jwtPolicies) > 0 }

// ref is a rule or function of a library package (authz, jwt or mesh), which the
// module then imports.
func (g *generator) ref(pkg, name string) string {
	g.imports[pkg] = true
	return pkg + "." + name
}

// str quotes s as a Rego string: JSON's syntax, which Rego's is. Every constant
// from a policy goes through it, so no policy text is ever pasted raw.
func (g *generator) str(s string) string {
	if !utf8.ValidString(s) {
		// JSON would replace the bad bytes, changing the constant. Proto strings are
		// valid UTF-8, so this does not happen; if it did, the library decides.
		if g.err == nil {
			g.err = fmt.Errorf("string %q is not valid UTF-8", s)
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

// strs is a Rego array of strings.
func (g *generator) strs(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = g.str(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func (g *generator) text(k WorkloadKey, pkg string) string {
	var b strings.Builder
	b.WriteString("# Code generated by authz.compile. DO NOT EDIT.\n#\n")
	fmt.Fprintf(&b, "# data.palisade.mesh.decision for the workload of namespace %s and labels %s,\n", g.str(k.Namespace), g.str(k.Labels))
	b.WriteString("# with the policies that apply to it written out (policies/mesh is the reference).\n")
	fmt.Fprintf(&b, "package %s\n\n", pkg)
	for _, name := range []string{"authz", "jwt"} {
		if g.imports[name] {
			fmt.Fprintf(&b, "import data.palisade.mesh.%s\n", name)
		}
	}
	if g.imports["mesh"] {
		b.WriteString("import data.palisade.mesh\n")
	}
	b.WriteString("\n")
	b.WriteString(g.body.String())
	if g.helpers.Len() > 0 {
		b.WriteString("# ---------------------------------------------------------------------------\n")
		b.WriteString("# Helpers: disjunctions of the rules above, one body per alternative.\n\n")
		b.WriteString(g.helpers.String())
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Tests: what a rule's field asks of the request.

// test is a condition on the request: true when one of alts (each a conjunction of
// Rego expressions) holds, after the statements of bind (which bind the value the
// alternatives test, e.g. "some v in LIST"). No alternatives: never true.
type test struct {
	bind []string
	alts [][]string
}

// value is what a field is matched against.
type value struct {
	bind []string // statements that bind it (one value per solution), or none
	expr string   // the value: an expression of one value, or a variable of bind
	// present: "" is no value, as authz.rego's present() makes it for
	// conditions, so "" matches no pattern.
	present bool
}

// must returns the body lines that hold when t does, writing a helper rule called
// name when t is not one conjunction. ok is false when t never holds.
func (g *generator) must(name string, t test) (lines []string, ok bool) {
	switch {
	case len(t.alts) == 0:
		return nil, false
	case len(t.bind) == 0 && len(t.alts) == 1:
		return t.alts[0], true
	}
	g.helper(name, t)
	return []string{name}, true
}

// mustNot returns the body lines that hold when t does not.
func (g *generator) mustNot(name string, t test) []string {
	switch {
	case len(t.alts) == 0:
		return nil
	case len(t.bind) == 0 && len(t.alts) == 1 && len(t.alts[0]) == 1:
		return []string{"not " + t.alts[0][0]}
	}
	g.helper(name, t)
	return []string{"not " + name}
}

// helper writes rule name with one body per alternative of t.
func (g *generator) helper(name string, t test) {
	for _, alt := range t.alts {
		fmt.Fprintf(&g.helpers, "%s if {\n", name)
		for _, l := range slices.Concat(t.bind, alt) {
			fmt.Fprintf(&g.helpers, "\t%s\n", l)
		}
		g.helpers.WriteString("}\n\n")
	}
}

// alternatives collects a test's alternatives without duplicates.
type alternatives struct {
	alts [][]string
	seen map[string]bool
}

func (a *alternatives) add(exprs ...string) {
	key := strings.Join(exprs, "\n")
	if a.seen == nil {
		a.seen = map[string]bool{}
	}
	if !a.seen[key] {
		a.seen[key] = true
		a.alts = append(a.alts, exprs)
	}
}

// oneOf is the expression "v is one of values": == for one, `in` a set for more.
func (g *generator) oneOf(v string, values []string) string {
	if len(values) == 1 {
		return fmt.Sprintf("%s == %s", v, g.str(values[0]))
	}
	q := make([]string, len(values))
	for i, s := range values {
		q[i] = g.str(s)
	}
	return fmt.Sprintf("%s in {%s}", v, strings.Join(q, ", "))
}

// stringTest is match.any_of(patterns, V) (and, lower-cased, match.matches as
// any_of_fold uses it, which is the same): V equals a pattern, or starts with
// what precedes a trailing "*" (and is not empty), or ends with what follows a
// leading "*" (and is not empty). An exact match of a pattern with a "*" at an end
// is covered by the prefix or suffix alternative, so only patterns without one
// are compared whole. At most four alternatives: one expression per kind (a set
// for the exact values, strings.any_prefix_match and any_suffix_match for several
// affixes, which fail on a value that is not a string, as startswith does), and
// "*", which is present() in the library: startswith(V, "") and V != "".
func (g *generator) stringTest(patterns []string, val value) test {
	var exact, prefixes, suffixes []string
	presence := false
	add := func(list *[]string, s string) {
		if s == "" {
			presence = true
		} else if !slices.Contains(*list, s) {
			*list = append(*list, s)
		}
	}
	for _, p := range patterns {
		starts, ends := strings.HasPrefix(p, "*"), strings.HasSuffix(p, "*")
		if !starts && !ends && !(val.present && p == "") && !slices.Contains(exact, p) {
			exact = append(exact, p)
		}
		if ends {
			add(&prefixes, strings.TrimSuffix(p, "*"))
		}
		if starts {
			add(&suffixes, strings.TrimPrefix(p, "*"))
		}
	}
	var alts [][]string
	if len(exact) > 0 {
		alts = append(alts, []string{g.oneOf(val.expr, exact)})
	}
	for _, a := range []struct {
		affixes       []string
		one, multiple string
	}{{prefixes, "startswith", "strings.any_prefix_match"}, {suffixes, "endswith", "strings.any_suffix_match"}} {
		switch len(a.affixes) {
		case 0:
		case 1:
			alts = append(alts, []string{fmt.Sprintf("%s(%s, %s)", a.one, val.expr, g.str(a.affixes[0]))})
		default:
			alts = append(alts, []string{fmt.Sprintf("%s(%s, %s)", a.multiple, val.expr, g.strs(a.affixes))})
		}
	}
	if presence {
		alts = append(alts, []string{fmt.Sprintf(`startswith(%s, "")`, val.expr), fmt.Sprintf(`%s != ""`, val.expr)})
	}
	return test{bind: val.bind, alts: alts}
}

// ipTest is authz.in_blocks(blocks, V): V is not empty and in one of the blocks,
// each an IP or a CIDR (the library's cidr(block), computed here). An address or
// block that does not parse makes net.cidr_contains fail, so that alternative
// does not hold, as in the library.
func (g *generator) ipTest(blocks []string, val value) test {
	var alts alternatives
	for _, block := range blocks {
		alts.add(fmt.Sprintf(`%s != ""`, val.expr), fmt.Sprintf("net.cidr_contains(%s, %s)", g.str(blockCIDR(block)), val.expr))
	}
	return test{bind: val.bind, alts: alts.alts}
}

// blockCIDR is authz.rego's cidr(block): an IP block as a CIDR, a bare IP its
// /32 or /128.
func blockCIDR(block string) string {
	switch {
	case strings.Contains(block, "/"):
		return block
	case strings.Contains(block, ":"):
		return block + "/128"
	}
	return block + "/32"
}

// portTest is V in ports: ports match exactly, as strings.
func (g *generator) portTest(ports []string, val value) test {
	var exact []string
	for _, p := range ports {
		if !(val.present && p == "") && !slices.Contains(exact, p) {
			exact = append(exact, p)
		}
	}
	if len(exact) == 0 {
		return test{}
	}
	return test{bind: val.bind, alts: [][]string{{g.oneOf(val.expr, exact)}}}
}

// hostTest is authz.host_matches(patterns): one of the host's forms (as sent,
// without port) matches a pattern ignoring case.
func (g *generator) hostTest(patterns []string) test {
	lower := make([]string, len(patterns))
	for i, p := range patterns {
		lower[i] = strings.ToLower(p) // OPA's lower() is strings.ToLower
	}
	return g.stringTest(lower, value{bind: []string{"some h in " + g.ref("authz", "host_forms"), "lh := lower(h)"}, expr: "lh"})
}

// ---------------------------------------------------------------------------
// Request attributes. The library computes each once per request; the module
// refers to its rules.

// requestPrincipal is request.auth.principal: the library's when a
// RequestAuthentication applies, else "" (without one no token is validated).
func (g *generator) requestPrincipal() string {
	g.use("request_principal")
	return "request_principal"
}

// requestAuth is request.auth.* (see requestPrincipal).
func (g *generator) requestAuth() string {
	g.use("request_auth")
	return "request_auth"
}

func (g *generator) use(local string) {
	if g.uses == nil {
		g.uses = map[string]bool{}
	}
	g.uses[local] = true
}

// listAttribute is a rule holding a list of values (a claim's, the audiences),
// computed once per request however many rules test it.
func (g *generator) listAttribute(key, expr string) value {
	name, ok := g.attrs[key]
	if !ok {
		name = fmt.Sprintf("attribute_%d", len(g.attrs))
		g.attrs[key] = name
		fmt.Fprintf(&g.helpers, "# %s\n%s := %s\n\n", g.str(key), name, expr)
	}
	return value{bind: []string{"some v in " + name}, expr: "v"}
}

// attribute is the value of a condition's key (authz.rego's attribute(key)); see
// attributeOf for the keys.
func (g *generator) attribute(key string) (value, attrKind) {
	kind, arg, _ := attributeOf(key)
	present := func(expr string) value { return value{expr: expr, present: true} }
	switch key {
	case "source.ip":
		return present(g.ref("authz", "source_ip")), kind
	case "remote.ip":
		return present(g.ref("authz", "remote_ip")), kind
	case "destination.ip":
		return present(g.ref("authz", "destination_ip")), kind
	case "destination.port":
		return present(g.ref("authz", "destination_port")), kind
	case "source.namespace":
		return present(g.ref("authz", "source_namespace")), kind
	case "source.principal":
		return present(g.ref("authz", "source_principal")), kind
	case "request.auth.principal":
		return present(g.requestPrincipal()), kind
	case "request.auth.audiences":
		return g.listAttribute(key, fmt.Sprintf(`object.get(%s, "audiences", [])`, g.requestAuth())), kind
	case "request.auth.presenter":
		return present(fmt.Sprintf(`object.get(%s, "presenter", "")`, g.requestAuth())), kind
	case "connection.sni":
		return present(g.ref("authz", "sni")), kind
	}
	if strings.HasPrefix(key, "request.headers[") {
		return present(fmt.Sprintf(`object.get(%s, %s, "")`, g.ref("authz", "headers"), g.str(arg[0]))), kind
	}
	// request.auth.claims[A][B]...: the library's claim_values of the claim.
	path := g.strs(append([]string{"claims"}, arg...))
	return g.listAttribute(key, fmt.Sprintf("%s(object.get(%s, %s, null))", g.ref("authz", "claim_values"), g.requestAuth(), path)), kind
}

// ---------------------------------------------------------------------------
// Istio's fields, one function per kind.

// sourceField is authz.rego's source_field(field, patterns): the body lines that
// hold when the request's source matches; ok is false when it never can.
func (g *generator) sourceField(name, field string, patterns []string) (lines []string, ok bool) {
	negate := strings.HasPrefix(field, "not")
	var t test
	switch field {
	case "principals", "notPrincipals":
		t = g.stringTest(patterns, value{expr: g.ref("authz", "source_principal")})
	case "requestPrincipals", "notRequestPrincipals":
		t = g.stringTest(patterns, value{expr: g.requestPrincipal()})
	case "namespaces", "notNamespaces":
		t = g.stringTest(patterns, value{expr: g.ref("authz", "source_namespace")})
	case "ipBlocks", "notIpBlocks":
		t = g.ipTest(patterns, value{expr: g.ref("authz", "source_ip")})
	case "remoteIpBlocks", "notRemoteIpBlocks":
		t = g.ipTest(patterns, value{expr: g.ref("authz", "remote_ip")})
	}
	if negate {
		return g.mustNot(name, t), true
	}
	return g.must(name, t)
}

// operationField is authz.rego's operation_field(field, patterns).
func (g *generator) operationField(name, field string, patterns []string) (lines []string, ok bool) {
	negate := strings.HasPrefix(field, "not")
	var t test
	switch field {
	case "hosts", "notHosts":
		t = g.hostTest(patterns)
	case "ports", "notPorts":
		t = g.portTest(patterns, value{expr: g.ref("authz", "destination_port")})
	case "methods", "notMethods":
		t = g.stringTest(patterns, value{expr: g.ref("authz", "method")})
	case "paths", "notPaths":
		t = g.stringTest(patterns, value{expr: g.ref("authz", "path")})
	}
	if negate {
		return g.mustNot(name, t), true
	}
	return g.must(name, t)
}

// condition is authz.rego's condition_matches(c): with values, the attribute
// matches one of them; with notValues, none of them.
func (g *generator) condition(name string, c *security.Condition) (lines []string, ok bool) {
	val, kind := g.attribute(c.GetKey())
	of := func(patterns []string) test {
		switch kind {
		case kindIP:
			return g.ipTest(patterns, val)
		case kindPort:
			return g.portTest(patterns, val)
		}
		return g.stringTest(patterns, val)
	}
	if vs := c.GetValues(); len(vs) > 0 {
		if lines, ok = g.must(name, of(vs)); !ok {
			return nil, false
		}
	}
	if nv := c.GetNotValues(); len(nv) > 0 {
		lines = append(lines, g.mustNot(name+"_not", of(nv))...)
	}
	return lines, true
}

// fieldsOf returns the lists of m's fields among names, in that order, that are
// not empty (an empty list is no constraint, and protojson leaves it out).
func fieldsOf(m proto.Message, names []string) (fields []string, lists [][]string) {
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil, nil
	}
	r := m.ProtoReflect()
	fds := r.Descriptor().Fields()
	for _, n := range names {
		fd := fds.ByJSONName(n)
		if fd == nil || !fd.IsList() || r.Get(fd).List().Len() == 0 {
			continue
		}
		l := r.Get(fd).List()
		list := make([]string, l.Len())
		for i := range l.Len() {
			list[i] = l.Get(i).String()
		}
		fields, lists = append(fields, n), append(lists, list)
	}
	return fields, lists
}

// anyOf is a disjunction of entries (from's sources, to's operations), each a
// conjunction of lines: the lines that hold when one does. An empty entry holds
// always, so the disjunction needs no lines; no entry never holds.
func (g *generator) anyOf(name string, entries [][]string) (lines []string, ok bool) {
	for _, e := range entries {
		if len(e) == 0 {
			return nil, true
		}
	}
	return g.must(name, test{alts: entries})
}

// rule is authz.rego's rule_matches(rule): the body lines that hold when the rule
// matches, ok false when it never can.
func (g *generator) rule(prefix string, r *security.Rule) (lines []string, ok bool) {
	if from := r.GetFrom(); len(from) > 0 {
		var entries [][]string
		for j, f := range from {
			if e, ok := g.entry(fmt.Sprintf("%s_f%d", prefix, j), f.GetSource(), sourceFields, g.sourceField); ok {
				entries = append(entries, e)
			}
		}
		l, ok := g.anyOf(prefix+"_from", entries)
		if !ok {
			return nil, false
		}
		lines = append(lines, l...)
	}
	if to := r.GetTo(); len(to) > 0 {
		var entries [][]string
		for j, t := range to {
			if e, ok := g.entry(fmt.Sprintf("%s_t%d", prefix, j), t.GetOperation(), operationFields, g.operationField); ok {
				entries = append(entries, e)
			}
		}
		l, ok := g.anyOf(prefix+"_to", entries)
		if !ok {
			return nil, false
		}
		lines = append(lines, l...)
	}
	for w, c := range r.GetWhen() {
		l, ok := g.condition(fmt.Sprintf("%s_w%d", prefix, w), c)
		if !ok {
			return nil, false
		}
		lines = append(lines, l...)
	}
	return lines, true
}

// entry is one source or operation: every field set must match.
func (g *generator) entry(prefix string, m proto.Message, names []string,
	field func(name, field string, patterns []string) ([]string, bool),
) (lines []string, ok bool) {
	fields, lists := fieldsOf(m, names)
	for i, f := range fields {
		l, ok := field(prefix+"_"+f, f, lists[i])
		if !ok {
			return nil, false
		}
		lines = append(lines, l...)
	}
	return lines, true
}

// firstMatch writes head := the index of the policy's first matching rule (authz.
// rego's first_match), as an else chain; value gives the rule's value from the
// index. It writes nothing, and returns false, when no rule can match.
func (g *generator) firstMatch(head string, p applied, value func(i int) string) bool {
	type candidate struct {
		index int
		lines []string
	}
	var cs []candidate
	for i, r := range p.spec.GetRules() {
		lines, ok := g.rule(fmt.Sprintf("p%d_r%d", p.index, i), r)
		if !ok {
			continue
		}
		cs = append(cs, candidate{i, lines})
		if len(lines) == 0 {
			break // it matches every request: no later rule is ever the first
		}
	}
	fmt.Fprintf(&g.body, "# %s (p%d): %s\n", g.str(p.id), p.index, ruleCount(len(p.spec.GetRules()), len(cs)))
	if len(cs) == 0 {
		g.body.WriteString("\n")
		return false
	}
	for n, c := range cs {
		if n == 0 {
			fmt.Fprintf(&g.body, "%s := %s", head, value(c.index))
		} else {
			fmt.Fprintf(&g.body, " else := %s", value(c.index))
		}
		if len(c.lines) > 0 {
			g.body.WriteString(" if {\n")
			for _, l := range c.lines {
				fmt.Fprintf(&g.body, "\t%s\n", l)
			}
			g.body.WriteString("}")
		}
	}
	g.body.WriteString("\n\n")
	return true
}

func ruleCount(rules, candidates int) string {
	if candidates == rules {
		return fmt.Sprintf("%d rule(s)", rules)
	}
	return fmt.Sprintf("%d rule(s), %d of which can match", rules, candidates)
}

// ---------------------------------------------------------------------------
// The module: matches by action, then decision.rego's steps with what is known
// here left out (a step no policy takes part in).
//
// Costs drive its shape. What a request pays for is the number of rules OPA
// evaluates (each costs about as much as several built-ins), function calls and
// comprehensions; so the decision's objects are written out (decision.rego's
// denial() and allowed), a policy's entry is read by its key when it is the only
// one of its action (a rule head with a constant key is a rule of its own), and
// the reasons of a single policy are a literal.

// action is one action's applicable policies: the rule of their matches
// (authz.rego's *_matches) and those that can match at all.
type action struct {
	name, rule, effect string
	policies           []applied // that apply
	can                []applied // that have a rule that can match
}

// matched is the condition "a policy of the action matched".
func (a *action) matched(g *generator) string {
	if len(a.can) == 1 {
		return fmt.Sprintf("%s[%s]", a.rule, g.str(a.can[0].id)) // a number: defined is true
	}
	return fmt.Sprintf("count(%s) > 0", a.rule)
}

// first is "NS/NAME" of the first policy (in sort order) that matched, where one
// did.
func (a *action) first(g *generator) string {
	if len(a.can) == 1 {
		return g.str(a.can[0].id)
	}
	return fmt.Sprintf("sort(object.keys(%s))[0]", a.rule)
}

// reasons are decision.rego's action_reasons(matches, action, effect): the
// policies that matched, in sort order, with their rule. sure says that one is
// known to have matched, which a single policy's literal needs.
func (a *action) reasons(g *generator, sure bool) string {
	switch {
	case len(a.can) == 0:
		return "[]"
	case len(a.can) == 1 && sure:
		id := g.str(a.can[0].id)
		return fmt.Sprintf(`[{"kind": "AuthorizationPolicy", "policy": %s, "action": %q, "rule": %s[%s], "effect": %q}]`, id, a.name, a.rule, id, a.effect)
	case len(a.can) == 1:
		id := g.str(a.can[0].id)
		return fmt.Sprintf(`[{"kind": "AuthorizationPolicy", "policy": %s, "action": %q, "rule": i, "effect": %q} | i := %s[%s]]`, id, a.name, a.effect, a.rule, id)
	}
	ids := make([]string, len(a.can))
	for i, p := range a.can {
		ids[i] = p.id
	}
	return fmt.Sprintf(`[{"kind": "AuthorizationPolicy", "policy": id, "action": %q, "rule": i, "effect": %q} | some id in %s; i := %s[id]]`,
		a.name, a.effect, g.strs(ids), a.rule)
}

func (g *generator) module(policies []applied, regos []regoApplied) {
	actions := map[security.AuthorizationPolicy_Action]*action{
		security.AuthorizationPolicy_CUSTOM: {name: "CUSTOM", rule: "custom_matches"},
		security.AuthorizationPolicy_DENY:   {name: "DENY", rule: "deny_matches", effect: "deny"},
		security.AuthorizationPolicy_AUDIT:  {name: "AUDIT", rule: "audit_matches", effect: "audit"},
		security.AuthorizationPolicy_ALLOW:  {name: "ALLOW", rule: "allow_matches", effect: "allow"},
	}
	for _, p := range policies {
		a := actions[p.spec.GetAction()]
		a.policies = append(a.policies, p)
	}
	custom, deny := actions[security.AuthorizationPolicy_CUSTOM], actions[security.AuthorizationPolicy_DENY]
	audit, allow := actions[security.AuthorizationPolicy_AUDIT], actions[security.AuthorizationPolicy_ALLOW]

	// Matches: "NS/NAME" → index of the first matching rule (for CUSTOM, with the
	// provider), per action. A policy none of whose rules can match has no entry.
	for _, a := range []*action{custom, deny, audit, allow} {
		if len(a.policies) == 0 {
			continue
		}
		fmt.Fprintf(&g.body, "# ---------------------------------------------------------------------------\n# %s policies: index of the first matching rule.\n\n", a.name)
		for _, p := range a.policies {
			value := func(i int) string { return fmt.Sprint(i) }
			if a == custom {
				value = func(i int) string {
					return fmt.Sprintf(`{"rule": %d, "provider": %s}`, i, g.str(p.spec.GetProvider().GetName()))
				}
			}
			if g.firstMatch(fmt.Sprintf("%s[%s]", a.rule, g.str(p.id)), p, value) {
				a.can = append(a.can, p)
			}
		}
	}

	var plain []regoApplied // RegoPolicies without provider
	for _, r := range regos {
		if r.provider == "" {
			plain = append(plain, r)
		}
	}

	g.body.WriteString("# ---------------------------------------------------------------------------\n# The decision (decision.rego), step by step.\n\n")
	g.defaultDecision()

	// The reasons of each step, as decision.rego concatenates them.
	var jwtReasons, customReasons, auditReasons, regoReasons []string
	if g.requestAuthn() {
		jwtReasons = []string{"jwt_reasons"}
	}
	if len(custom.can) > 0 {
		customReasons = []string{"custom_reasons"}
	}
	if len(audit.can) > 0 {
		auditReasons = []string{audit.reasons(g, false)}
	}
	if len(plain) > 0 {
		regoReasons = []string{"rego_reasons"}
	}
	// The ALLOW policies that matched or, when none did, all that apply, none
	// matching.
	var allowReasons, noMatch []string
	if len(allow.policies) > 0 {
		var none []string
		for _, p := range allow.policies {
			none = append(none, fmt.Sprintf(`{"kind": "AuthorizationPolicy", "policy": %s, "action": "ALLOW", "effect": "no match"}`, g.str(p.id)))
		}
		noMatch = []string{"[" + strings.Join(none, ", ") + "]"}
		// Step 4 denies whenever no ALLOW policy matched (its value is always
		// defined), so once past it one did.
		allowReasons = []string{allow.reasons(g, true)}
		if len(allow.can) == 0 {
			allowReasons = noMatch
		}
	}

	first := true
	branch := func(what string, fields [][2]string, cond ...string) {
		if first {
			fmt.Fprintf(&g.body, "# %s\ndecision := {\n", what)
			first = false
		} else {
			fmt.Fprintf(&g.body, " else := {\n\t# %s\n", what)
		}
		for _, f := range fields {
			fmt.Fprintf(&g.body, "\t%q: %s,\n", f[0], f[1])
		}
		g.body.WriteString("}")
		if len(cond) > 0 {
			g.body.WriteString(" if {\n")
			for _, c := range cond {
				fmt.Fprintf(&g.body, "\t%s\n", c)
			}
			g.body.WriteString("}")
		}
	}
	// denial is decision.rego's denial(status, headers, body, reason, reasons).
	denial := func(status, headers, body, reason string, reasons ...[]string) [][2]string {
		return [][2]string{
			{"allowed", "false"}, {"http_status", status}, {"headers", headers},
			{"response_headers_to_add", "{}"}, {"request_headers_to_remove", "[]"},
			{"body", body}, {"reason", reason}, {"reasons", concatArrays(reasons...)},
		}
	}
	if g.requestAuthn() {
		branch("1. An invalid JWT denies (401).", denial("401", `{"www-authenticate": jwt_www_authenticate}`,
			"jwt_reason", "jwt_reason", jwtReasons), "jwt_denied")
	}
	if len(custom.can) > 0 {
		branch("2. A matching CUSTOM policy whose provider denies.", denial(
			`object.get(custom_denial.verdict, "http_status", 403)`, `object.get(custom_denial.verdict, "headers", {})`,
			`object.get(custom_denial.verdict, "body", "")`, "custom_denial.reason", jwtReasons, customReasons, auditReasons),
			"custom_denial")
	}
	if len(deny.can) > 0 {
		reason := fmt.Sprintf(`concat("", ["denied by DENY policy ", %s])`, deny.first(g))
		if len(deny.can) == 1 {
			reason = g.str("denied by DENY policy " + deny.can[0].id)
		}
		branch("3. A matching DENY policy denies.", denial("403", "{}", `"RBAC: access denied"`, reason,
			jwtReasons, customReasons, []string{deny.reasons(g, true)}, auditReasons), deny.matched(g))
	}
	if len(allow.policies) > 0 {
		cond := "true" // no ALLOW policy can match
		if len(allow.can) > 0 {
			cond = "not " + allow.matched(g)
		}
		branch("4. ALLOW policies apply and none matched.", denial("403", "{}", `"RBAC: access denied"`, `"no ALLOW policy matched"`,
			jwtReasons, customReasons, auditReasons, noMatch), cond)
	}
	if len(plain) > 0 {
		branch("5. A RegoPolicy without provider denies.", denial(
			`object.get(rego_denial.verdict, "http_status", 403)`, `object.get(rego_denial.verdict, "headers", {})`,
			`object.get(rego_denial.verdict, "body", "")`, "rego_denial.reason", jwtReasons, customReasons, auditReasons, allowReasons, regoReasons),
			"rego_denial")
	}
	// Allowed: decision.rego's allowed. decision.rego decides only when
	// is_string(selection.namespace) and is_string(selection.root); for an input of
	// this workload (input.palisade.workload set) those are the two refs below,
	// read directly, which costs less than the library's rules.
	reason := `"allowed: no ALLOW policy applies"`
	switch {
	case len(allow.can) == 1:
		reason = g.str("allowed by ALLOW policy " + allow.can[0].id)
	case len(allow.can) > 1:
		reason = fmt.Sprintf(`concat("", ["allowed by ALLOW policy ", %s])`, allow.first(g))
	}
	verdicts := len(custom.can) > 0 || len(plain) > 0
	headers := [3]string{"{}", "{}", "[]"}
	if g.requestAuthn() || verdicts {
		headers = [3]string{"added.headers", "added.response_headers_to_add", "added.request_headers_to_remove"}
	}
	branch("Every step allowed.", [][2]string{
		{"allowed", "true"}, {"http_status", "200"}, {"headers", headers[0]},
		{"response_headers_to_add", headers[1]}, {"request_headers_to_remove", headers[2]},
		{"body", `""`}, {"reason", reason},
		{"reasons", concatArrays(jwtReasons, customReasons, auditReasons, allowReasons, regoReasons)},
	}, "is_string(input.palisade.workload.namespace)", "is_string(data.palisade.config.root_namespace)")
	g.body.WriteString("\n\n")

	if g.requestAuthn() || verdicts {
		g.added(verdicts)
	}
	g.regoPolicies(regos, plain, custom.can)
	if g.requestAuthn() {
		g.jwt()
	}
	g.attributes()
}

// concatArrays is array.concat of the given arrays in order ([] for none).
func concatArrays(parts ...[]string) string {
	all := slices.Concat(parts...)
	if len(all) == 0 {
		return "[]"
	}
	out := all[len(all)-1]
	for i := len(all) - 2; i >= 0; i-- {
		out = fmt.Sprintf("array.concat(%s, %s)", all[i], out)
	}
	return out
}

// defaultDecision is decision.rego's: deny when nothing decides (which, given the
// data Policy builds and the workload's input, does not happen).
func (g *generator) defaultDecision() {
	g.body.WriteString(`default decision := {
	"allowed": false,
	"http_status": 403,
	"headers": {},
	"response_headers_to_add": {},
	"request_headers_to_remove": [],
	"body": "RBAC: access denied",
	"reason": "denied: no decision (input.palisade.workload or data.palisade.config missing)",
	"reasons": [],
}

`)
}

// added is decision.rego's: the header changes of an allowed request, from the
// JWT's outputs and the allowing RegoPolicies' verdicts (in order: later ones
// win).
func (g *generator) added(verdicts bool) {
	empty := `{"headers": {}, "response_headers_to_add": {}, "request_headers_to_remove": []}`
	requestHeaders, toRemove := "{}", "set()"
	var none []string
	if g.requestAuthn() {
		requestHeaders, toRemove = "jwt_request_headers", "jwt_request_headers_to_remove"
		none = append(none, "not jwt_auth")
	}
	if !verdicts {
		// Only the JWT's: the unions below of one object and nothing.
		fmt.Fprintf(&g.body, `added := %s if {
	%s
} else := {
	"headers": %s,
	"response_headers_to_add": {},
	"request_headers_to_remove": sort(%s),
}

`, empty, strings.Join(none, "\n\t"), requestHeaders, toRemove)
		return
	}
	none = append(none, "count(allowing_verdicts) == 0")
	fmt.Fprintf(&g.body, `added := %s if {
	%s
} else := {
	"headers": object.union_n(array.concat([%s], [object.get(v, "headers", {}) | some v in allowing_verdicts])),
	"response_headers_to_add": object.union_n([object.get(v, "response_headers_to_add", {}) | some v in allowing_verdicts]),
	"request_headers_to_remove": sort(%s | {h | some v in allowing_verdicts; some h in object.get(v, "request_headers_to_remove", [])}),
}

`, empty, strings.Join(none, "\n\t"), requestHeaders, toRemove)
}

// regoPolicies writes the steps of RegoPolicies: CUSTOM providers (when a CUSTOM
// policy can match) and those without provider. The verdicts are the library's
// (mesh.verdict of the policy as the data has it), in sort order of "NS/NAME".
func (g *generator) regoPolicies(regos, plain []regoApplied, customs []applied) {
	custom := len(customs) > 0
	if !custom && len(plain) == 0 {
		return
	}
	g.body.WriteString("# ---------------------------------------------------------------------------\n# RegoPolicies: verdicts, CUSTOM providers, then those without provider.\n\n")
	for _, r := range regos {
		if r.provider != "" && !custom {
			continue // a provider no CUSTOM policy can ask
		}
		fmt.Fprintf(&g.body, "%s := %s({\"metadata\": {\"namespace\": %s, \"name\": %s}, \"spec\": {\"decision\": %s}})\n\n",
			r.verdict, g.ref("mesh", "verdict"), g.str(r.namespace), g.str(r.name), g.str(r.decision))
	}
	var allowing []string
	if custom {
		g.providers(regos, customs)
		allowing = append(allowing, `[provider_verdicts[name][id] | some name in sort(providers); some id in sort(object.keys(object.get(provider_verdicts, name, {})))]`)
	}
	if len(plain) > 0 {
		var vs, reasons, ids []string
		for _, r := range plain {
			vs = append(vs, r.verdict)
			ids = append(ids, fmt.Sprintf("%s: %s", g.str(r.id), r.verdict))
			reasons = append(reasons, fmt.Sprintf(`object.union({"kind": "RegoPolicy", "policy": %s, "effect": %s(%s)}, %s(%s))`,
				g.str(r.id), g.ref("mesh", "effect"), r.verdict, g.ref("mesh", "verdict_detail"), r.verdict))
		}
		allowing = append(allowing, "["+strings.Join(vs, ", ")+"]")
		fmt.Fprintf(&g.body, "rego_verdicts := {%s}\n\n", strings.Join(ids, ", "))
		fmt.Fprintf(&g.body, "rego_reasons := [\n\t%s,\n]\n\n", strings.Join(reasons, ",\n\t"))
		// The first RegoPolicy (in sort order) that denies.
		for i, r := range plain {
			head := "rego_denial :="
			if i > 0 {
				head = " else :="
			}
			fmt.Fprintf(&g.body, "%s {\"verdict\": %s, \"reason\": %s(%s, %s)} if {\n\tnot %s(%s)\n}", head,
				r.verdict, g.ref("mesh", "rego_denial_reason"), g.str(r.id), r.verdict, g.ref("mesh", "allows"), r.verdict)
		}
		g.body.WriteString("\n\n")
	}
	fmt.Fprintf(&g.body, "allowing_verdicts := %s\n\n", concatArrays(allowing))
}

// providers writes decision.rego's CUSTOM step for the providers the workload's
// CUSTOM policies name: which are asked, their RegoPolicies' verdicts, whether
// each denies, the first matching CUSTOM policy whose provider denies, and the
// reasons.
func (g *generator) providers(regos []regoApplied, customs []applied) {
	g.body.WriteString("providers contains m.provider if some m in custom_matches\n\n")
	byProvider := map[string][]regoApplied{}
	var names []string
	for _, r := range regos {
		if r.provider == "" {
			continue
		}
		if _, ok := byProvider[r.provider]; !ok {
			names = append(names, r.provider)
		}
		byProvider[r.provider] = append(byProvider[r.provider], r)
	}
	slices.Sort(names)
	for _, name := range names {
		var items []string
		for _, r := range byProvider[name] {
			items = append(items, fmt.Sprintf("%s: %s", g.str(r.id), r.verdict))
		}
		fmt.Fprintf(&g.body, "provider_verdicts[%s] := {%s} if %s in providers\n\n", g.str(name), strings.Join(items, ", "), g.str(name))
	}
	if len(names) == 0 {
		g.body.WriteString("provider_verdicts := {}\n\n")
	}
	// provider_denial for every provider a CUSTOM policy can ask: none of its
	// RegoPolicies applies, or the first of them (in sort order) that denies.
	var asked []string // the providers of the CUSTOM policies that can match
	for _, c := range customs {
		if name := c.spec.GetProvider().GetName(); !slices.Contains(asked, name) {
			asked = append(asked, name)
		}
	}
	slices.Sort(asked)
	for _, name := range asked {
		rs := byProvider[name]
		if len(rs) == 0 {
			fmt.Fprintf(&g.body, "provider_denial[%s] := {\"policy\": \"\", \"verdict\": {}} if %s in providers\n\n", g.str(name), g.str(name))
			continue
		}
		for i, r := range rs {
			head := fmt.Sprintf("provider_denial[%s] :=", g.str(name))
			if i > 0 {
				head = " else :="
			}
			fmt.Fprintf(&g.body, "%s {\"policy\": %s, \"verdict\": %s} if {\n\t%s in providers\n\tnot %s(%s)\n}", head,
				g.str(r.id), r.verdict, g.str(name), g.ref("mesh", "allows"), r.verdict)
		}
		g.body.WriteString("\n\n")
	}
	// custom_denial: the first matching CUSTOM policy (in sort order) whose
	// provider denies.
	for i, c := range customs {
		head := "custom_denial :="
		if i > 0 {
			head = " else :="
		}
		name := g.str(c.spec.GetProvider().GetName())
		fmt.Fprintf(&g.body, "%s {\"verdict\": d.verdict, \"reason\": %s(%s, %s, d.policy)} if {\n\tcustom_matches[%s]\n\td := provider_denial[%s]\n}",
			head, g.ref("mesh", "custom_denial_reason"), g.str(c.id), name, g.str(c.id), name)
	}
	g.body.WriteString("\n\n")
	fmt.Fprintf(&g.body, `custom_reasons := [] if {
	count(custom_matches) == 0
} else := array.concat(
	[r |
		some id in sort(object.keys(custom_matches))
		m := custom_matches[id]
		r := {
			"kind": "AuthorizationPolicy", "policy": id, "action": "CUSTOM", "provider": m.provider,
			"rule": m.rule, "effect": custom_effect(m.provider), "detail": concat("", ["provider ", m.provider]),
		}
	],
	[r |
		some name in sort(providers)
		some id in sort(object.keys(object.get(provider_verdicts, name, {})))
		v := provider_verdicts[name][id]
		r := object.union({"kind": "RegoPolicy", "policy": id, "provider": name, "effect": %s(v)}, %s(v))
	],
)

custom_effect(name) := "deny" if {
	provider_denial[name]
} else := "allow"

`, g.ref("mesh", "effect"), g.ref("mesh", "verdict_detail"))
}

// attributes writes the local attribute rules the rules refer to.
func (g *generator) attributes() {
	if !g.uses["request_principal"] && !g.uses["request_auth"] {
		return
	}
	g.body.WriteString("# ---------------------------------------------------------------------------\n# request.auth.*\n\n")
	if !g.requestAuthn() {
		g.body.WriteString("# No RequestAuthentication applies: no token is validated, so no request.auth.\n")
	}
	if g.uses["request_principal"] {
		if g.requestAuthn() {
			g.body.WriteString("default request_principal := \"\"\n\nrequest_principal := jwt_auth.principal\n\n")
		} else {
			g.body.WriteString("request_principal := \"\"\n\n")
		}
	}
	if g.uses["request_auth"] {
		if g.requestAuthn() {
			g.body.WriteString("request_auth := jwt_auth\n\n")
		} else {
			g.body.WriteString("request_auth := {}\n\n")
		}
	}
}

// ---------------------------------------------------------------------------
// RequestAuthentication.

// jwtRule is jwtRules[index] of the applicable RequestAuthentication id ("NS/NAME"),
// with a fetched JWKS inline.
type jwtRule struct {
	id    string
	index int
	rule  *security.JWTRule
}

// jwt writes jwt.rego's results (denied, reason, reasons, auth and the header
// changes) as local rules jwt_*, for the rules that apply: the library's
// "rules" selects them on every request, and its extraction reads every rule's
// fields; here each place a token is read from is an expression of its own, and
// each rule's verification a function with the rule's constants. The rules are
// numbered in the library's order of their keys, which the reasons follow.
func (g *generator) jwt() {
	b := &g.body
	b.WriteString("# ---------------------------------------------------------------------------\n# RequestAuthentication (jwt.rego) with the rules that apply written out.\n\n")

	// jwt_extracted is jwt.rego's extracted: [TOKEN, RULE, WHERE].
	var extracted []string
	for k, r := range g.jwtRules {
		for _, loc := range jwtLocations(r.rule) {
			var where, bind string
			switch {
			case loc.header != "":
				// jwt.header_token, inline: the value after the prefix, trimmed. The
				// prefix is cut by bytes (trim_prefix), which is the library's cut by
				// code points (substring from count(prefix)) of a string that starts
				// with it, without converting the token to code points.
				where = fmt.Sprintf(`{"header": %s}`, g.str(loc.header))
				bind = fmt.Sprintf("{\n\th := input.attributes.request.http.headers[%s]\n\tstartswith(h, %s)\n\tt := trim_space(trim_prefix(h, %s))\n\tt != \"\"\n}",
					g.str(loc.header), g.str(loc.prefix), g.str(loc.prefix))
			case loc.param != "":
				where = fmt.Sprintf(`{"param": %s}`, g.str(loc.param))
				bind = fmt.Sprintf("{\n\tsome t in input.parsed_query[%s]\n\tt != \"\"\n}", g.str(loc.param))
			default:
				where = fmt.Sprintf(`{"cookie": %s}`, g.str(loc.cookie))
				bind = fmt.Sprintf("some t in %s(%s)", g.ref("jwt", "cookie_tokens"), g.str(loc.cookie))
			}
			extracted = append(extracted, fmt.Sprintf("jwt_extracted contains [t, %d, %s] if %s\n\n", k, where, bind))
		}
	}
	if len(extracted) == 0 {
		b.WriteString("jwt_extracted := set()\n\n")
	}
	for _, e := range extracted {
		b.WriteString(e)
	}

	// jwt_rules: what the generic rules below read of each rule.
	rules := make([]string, len(g.jwtRules))
	for k, r := range g.jwtRules {
		claimHeaders := make([]string, len(r.rule.GetOutputClaimToHeaders()))
		for i, h := range r.rule.GetOutputClaimToHeaders() {
			claimHeaders[i] = fmt.Sprintf(`{"header": %s, "claim": %s}`, g.str(h.GetHeader()), g.str(h.GetClaim()))
		}
		// Every field in every rule, "" and false for none, so that OPA's type
		// checker knows them all.
		fields := []string{
			fmt.Sprintf(`"id": %s`, g.str(r.id)),
			fmt.Sprintf(`"issuer": %s`, g.str(r.rule.GetIssuer())),
			fmt.Sprintf(`"forwardOriginalToken": %t`, r.rule.GetForwardOriginalToken()),
			fmt.Sprintf(`"outputPayloadToHeader": %s`, g.str(r.rule.GetOutputPayloadToHeader())),
			`"outputClaimToHeaders": [` + strings.Join(claimHeaders, ", ") + "]",
		}
		rules[k] = "\t{" + strings.Join(fields, ", ") + "},\n"
	}
	fmt.Fprintf(b, "jwt_rules := [\n%s]\n\n", strings.Join(rules, ""))

	// jwt_valid is jwt.rego's valid: the verified claims of each token a rule
	// reading the place it was found in accepts. A comprehension, so that it is
	// computed once however it is read.
	verifying := 0
	for k, r := range g.jwtRules {
		if r.rule.GetJwks() == "" {
			// No JWKS (jwksUri not fetched): nothing verifies, as in the library.
			continue
		}
		verifying++
		g.jwtVerify(k, r.rule)
	}
	if verifying == 0 {
		b.WriteString("jwt_valid := {}\n\n")
	} else {
		b.WriteString("jwt_valid := {t: claims |\n\tsome [t, k, _] in jwt_extracted\n\tclaims := jwt_verify(k, t)\n}\n\n")
	}
	b.WriteString(`# jwt.rego's invalid and denied ("configured" holds: a RequestAuthentication
# applies).
jwt_invalid contains t if {
	some [t, _, _] in jwt_extracted
	not jwt_valid[t]
}

jwt_denied if count(jwt_invalid) > 0

jwt_auth := {
	"principal": concat("/", [claims.iss, object.get(claims, "sub", "")]),
	"audiences": ` + g.ref("jwt", "audiences") + `(claims),
	"presenter": object.get(claims, "azp", ""),
	"claims": claims,
} if {
	claims := jwt_valid[jwt_auth_token]
}

jwt_auth_token := sort(object.keys(jwt_valid))[0]

# The denial: the first invalid token, its unverified claims, and the rules of its
# issuer that read it.
jwt_failed_token := sort(jwt_invalid)[0]

jwt_failed_claims := claims if [_, claims, _] := io.jwt.decode(jwt_failed_token)

jwt_failed_rules contains k if {
	some [t, k, _] in jwt_extracted
	t == jwt_failed_token
	jwt_rules[k].issuer == jwt_failed_claims.iss
}

jwt_reason := "Jwt verification fails" if {
	jwt_denied
	count(jwt_failed_rules) > 0
} else := "Jwt issuer is not configured" if {
	jwt_denied
	jwt_failed_claims
} else := "Jwt verification fails" if jwt_denied

default jwt_failed_issuer := ""

jwt_failed_issuer := object.get(jwt_failed_claims, "iss", "")

jwt_failed_policies contains jwt_rules[k].id if some k in jwt_failed_rules

# jwt.rego's www_authenticate, from the three fields it reads, so that the module
# reads no more of the request than it needs.
jwt_www_authenticate := concat("", [
	"Bearer realm=\"", jwt_scheme, "://", jwt_host, split(jwt_path, "?")[0],
	"\", error=\"invalid_token\"",
])

default jwt_scheme := "http"

jwt_scheme := input.attributes.request.http.scheme

default jwt_host := ""

jwt_host := input.attributes.request.http.host

default jwt_path := "/"

jwt_path := input.attributes.request.http.path

`)
	fmt.Fprintf(b, `jwt_failed_policies contains id if {
	jwt_denied
	count(jwt_failed_rules) == 0
	some id in %s
}

`, g.strs(g.jwtPolicies))
	// jwt.rego's validating_policies: the RequestAuthentications with a rule of
	// the valid token's issuer that read it; with one rule, the token's.
	if len(g.jwtRules) == 1 {
		fmt.Fprintf(b, "jwt_validating_policies := {%s}\n\n", g.str(g.jwtRules[0].id))
	} else {
		b.WriteString(`jwt_validating_policies contains jwt_rules[k].id if {
	some [t, k, _] in jwt_extracted
	t == jwt_auth_token
	jwt_rules[k].issuer == jwt_auth.claims.iss
}

`)
	}
	b.WriteString(`# jwt.rego's reasons. Its "count(found) > 0" holds whenever a token is denied or
# valid, so it is left out.
default jwt_reasons := []

jwt_reasons := [r |
	some id in sort(jwt_failed_policies)
	r := {"kind": "RequestAuthentication", "policy": id, "effect": "deny", "detail": jwt_reason, "issuer": jwt_failed_issuer}
] if jwt_denied else := [r |
	some id in sort(jwt_validating_policies)
	r := {"kind": "RequestAuthentication", "policy": id, "effect": "allow", "principal": jwt_auth.principal, "detail": jwt_auth.principal}
] if jwt_auth

jwt_request_headers_to_remove contains name if {
	some [t, k, {"header": name}] in jwt_extracted
	jwt_valid[t]
	not jwt_rules[k].forwardOriginalToken
}

`)
	outputs := false
	for _, r := range g.jwtRules {
		outputs = outputs || r.rule.GetOutputPayloadToHeader() != "" || len(r.rule.GetOutputClaimToHeaders()) > 0
	}
	if !outputs {
		b.WriteString("jwt_request_headers := {}\n\n")
		return
	}
	b.WriteString(`jwt_request_headers[name] := split(t, ".")[1] if {
	some [t, k, _] in jwt_extracted
	t == jwt_auth_token
	name := jwt_rules[k].outputPayloadToHeader
	name != ""
}

jwt_request_headers[h.header] := value if {
	some [t, k, _] in jwt_extracted
	t == jwt_auth_token
	some h in jwt_rules[k].outputClaimToHeaders
	value := ` + g.ref("jwt", "claim_string") + `(jwt_valid[t][h.claim])
}

`)
}

// jwtLocation is a place a rule reads tokens from: a header (lower case, with the
// prefix before the token), a query parameter or a cookie.
type jwtLocation struct{ header, prefix, param, cookie string }

// jwtLocations are the places r reads, as jwt.rego's extracted: its fromHeaders,
// fromParams and fromCookies, or, when it names none, Istio's defaults.
func jwtLocations(r *security.JWTRule) []jwtLocation {
	if len(r.GetFromHeaders())+len(r.GetFromParams())+len(r.GetFromCookies()) == 0 {
		return []jwtLocation{{header: "authorization", prefix: "Bearer "}, {param: "access_token"}}
	}
	var out []jwtLocation
	for _, h := range r.GetFromHeaders() {
		out = append(out, jwtLocation{header: strings.ToLower(h.GetName()), prefix: h.GetPrefix()})
	}
	for _, p := range r.GetFromParams() {
		out = append(out, jwtLocation{param: p})
	}
	for _, c := range r.GetFromCookies() {
		out = append(out, jwtLocation{cookie: c})
	}
	return out
}

// jwtVerify writes jwt_verify(K, token): the token's claims when rule K accepts
// it (jwt.rego's verify, with the issuer check of valid). A rule with audiences
// asks io.jwt.decode_verify for each of them, which reads nothing but its
// verification cache for a token seen before; that equals the library's way
// (decode for the issuer and audiences, then decode_verify with the token's first
// audience, then the rule's audiences checked), since decode_verify accepts an
// audience only when the token has it. A rule without audiences, or without an
// issuer, takes the library's way.
func (g *generator) jwtVerify(k int, r *security.JWTRule) {
	rule := fmt.Sprintf(`{"issuer": %s, "jwks": %s, "audiences": %s}`, g.str(r.GetIssuer()), g.str(r.GetJwks()), g.strs(r.GetAudiences()))
	if len(r.GetAudiences()) == 0 || r.GetIssuer() == "" {
		fmt.Fprintf(&g.body, `jwt_verify(%d, t) := claims if {
	[_, unverified, _] := io.jwt.decode(t)
	unverified.iss == %s
	[ok, _, claims] := io.jwt.decode_verify(t, %s(%s, unverified))
	ok
	%s(%s, claims)
}

`, k, g.str(r.GetIssuer()), g.ref("jwt", "constraints"), rule, g.ref("jwt", "audience_allowed"), rule)
		return
	}
	aud, loop := g.str(r.GetAudiences()[0]), ""
	if len(r.GetAudiences()) > 1 {
		aud, loop = "aud", fmt.Sprintf("\tsome aud in %s\n", g.strs(r.GetAudiences()))
	}
	fmt.Fprintf(&g.body, `jwt_verify(%d, t) := claims if {
%s	[ok, _, claims] := io.jwt.decode_verify(t, {"cert": %s, "iss": %s, "time": time.now_ns(), "aud": %s})
	ok
}

`, k, loop, g.str(r.GetJwks()), g.str(r.GetIssuer()), aud)
}
