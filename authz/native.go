package authz

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
)

// This file compiles a workload's policies into a native decision: Go matchers
// that decide as data.palisade.mesh.decision does for that workload's requests,
// the way Istio compiles AuthorizationPolicies into Envoy's RBAC filter. The mesh
// library (policies/mesh) stays the definition: the native decision is written
// rule for rule after it; TestCompiledDecisionEqualsLibrary checks the two
// deep-equal on random requests, and FuzzNativeDecision on fuzzed ones. OPA's evaluator costs tens of microseconds and
// hundreds of allocations per decision however small the policy; a native
// decision costs a few, so the ext_authz server's cost stays close to gRPC's.
//
// What is compiled natively: AuthorizationPolicies with ALLOW, DENY and AUDIT
// (the fields and condition keys checkSupported accepts) and
// RequestAuthentications. A workload that a RegoPolicy or a CUSTOM policy applies
// to is decided by its compiled Rego module (users' Rego runs in OPA), and so is
// one whose jwtRules output claims to headers (claim_string formats values the
// way OPA's sprintf does, which is not worth a second implementation). Tokens are
// decoded and verified by OPA's own built-ins (io.jwt.decode and
// io.jwt.decode_verify), called directly, so their semantics are OPA's.

// nativeDecisions are a policy's native decisions by workload query name (see
// workloadQueryName): what rego.Policy.Native holds.
type nativeDecisions map[string]*nativeDecision

// nativeDecision is one workload's decision.
type nativeDecision struct {
	deny, audit, allow []nativePolicy // applicable policies by action, sorted by "NS/NAME"
	// noMatch are the reasons of step 4 (every ALLOW policy, none matching).
	noMatch []any
	jwt     *nativeJWT // nil: no RequestAuthentication applies
}

// nativePolicy is an applicable AuthorizationPolicy: its rules in order, each
// with the reason the decision reports when it is the first to match.
type nativePolicy struct {
	id    string
	rules []nativeRule
	// decided is the decision's reason when the policy is the first of its action
	// to match ("allowed by ALLOW policy NS/NAME", "denied by DENY policy NS/NAME").
	decided string
}

type nativeRule struct {
	reason any // {"kind": "AuthorizationPolicy", "policy": ID, "action": A, "rule": I, "effect": E}
	match  []matcher
}

// matcher is one test a rule's from, to or when makes of the request.
type matcher func(r *nativeRequest) bool

// compileNative compiles the decision of a workload with the policies that apply
// to it; ok is false when it uses what is decided in OPA (see the top of the file).
func compileNative(w workloadPolicies, tokens *jwtCache) (d *nativeDecision, ok bool) {
	if len(w.regos) > 0 {
		return nil, false
	}
	for _, r := range w.jwtRules {
		if len(r.rule.GetOutputClaimToHeaders()) > 0 {
			return nil, false
		}
	}
	d = &nativeDecision{}
	for _, p := range w.policies {
		np := nativePolicy{id: p.id}
		var list *[]nativePolicy
		var action, effect string
		switch p.spec.GetAction() {
		case security.AuthorizationPolicy_DENY:
			list, action, effect = &d.deny, "DENY", "deny"
			np.decided = "denied by DENY policy " + p.id
		case security.AuthorizationPolicy_AUDIT:
			list, action, effect = &d.audit, "AUDIT", "audit"
		case security.AuthorizationPolicy_ALLOW:
			list, action, effect = &d.allow, "ALLOW", "allow"
			np.decided = "allowed by ALLOW policy " + p.id
			d.noMatch = append(d.noMatch, map[string]any{"kind": "AuthorizationPolicy", "policy": p.id, "action": "ALLOW", "effect": "no match"})
		default: // CUSTOM asks RegoPolicies
			return nil, false
		}
		for i, r := range p.spec.GetRules() {
			np.rules = append(np.rules, nativeRule{match: ruleMatchers(r), reason: map[string]any{
				"kind": "AuthorizationPolicy", "policy": p.id, "action": action, "rule": json.Number(strconv.Itoa(i)), "effect": effect,
			}})
		}
		*list = append(*list, np)
	}
	if len(w.jwtPolicies) > 0 {
		d.jwt = compileJWT(w.jwtPolicies, w.jwtRules, tokens)
	}
	return d, true
}

// ruleMatchers are authz.rego's rule_matches(rule): from, to and every when
// condition.
func ruleMatchers(r *security.Rule) []matcher {
	var ms []matcher
	for _, entries := range []struct {
		messages []proto.Message
		fields   []string
		field    func(name string, patterns []string) matcher
	}{
		{sources(r.GetFrom()), sourceFields, sourceFieldMatcher},
		{operations(r.GetTo()), operationFields, operationFieldMatcher},
	} {
		if len(entries.messages) > 0 {
			conj := make([][]matcher, len(entries.messages))
			for i, m := range entries.messages {
				conj[i] = fieldMatchers(m, entries.fields, entries.field)
			}
			ms = append(ms, anyEntry(conj)...)
		}
	}
	for _, c := range r.GetWhen() {
		ms = append(ms, conditionMatcher(c))
	}
	return ms
}

func sources(from []*security.Rule_From) []proto.Message {
	out := make([]proto.Message, len(from))
	for i, f := range from {
		out[i] = f.GetSource()
	}
	return out
}

func operations(to []*security.Rule_To) []proto.Message {
	out := make([]proto.Message, len(to))
	for i, t := range to {
		out[i] = t.GetOperation()
	}
	return out
}

// anyEntry is "one of the entries (each a conjunction, at least one entry)
// holds": no matcher when an entry is empty (it always holds).
func anyEntry(entries [][]matcher) []matcher {
	for _, e := range entries {
		if len(e) == 0 {
			return nil
		}
	}
	return []matcher{func(r *nativeRequest) bool {
		for _, e := range entries {
			if all(e, r) {
				return true
			}
		}
		return false
	}}
}

func all(ms []matcher, r *nativeRequest) bool {
	for _, m := range ms {
		if !m(r) {
			return false
		}
	}
	return true
}

// fieldMatchers are an entry's fields (source or operation): every field set must
// match.
func fieldMatchers(m proto.Message, names []string, field func(name string, patterns []string) matcher) []matcher {
	fields, lists := fieldsOf(m, names)
	ms := make([]matcher, len(fields))
	for i, f := range fields {
		ms[i] = field(f, lists[i])
	}
	return ms
}

// sourceFieldMatcher is authz.rego's source_field(field, patterns).
func sourceFieldMatcher(field string, patterns []string) matcher {
	var m matcher
	switch positive(field) {
	case "principals":
		m = stringMatcher(patterns, (*nativeRequest).sourcePrincipal)
	case "requestPrincipals":
		m = stringMatcher(patterns, func(r *nativeRequest) string { return r.auth.principal })
	case "namespaces":
		m = stringMatcher(patterns, (*nativeRequest).sourceNamespace)
	case "ipBlocks":
		m = blocksMatcher(patterns, (*nativeRequest).sourceIP)
	case "remoteIpBlocks":
		m = blocksMatcher(patterns, (*nativeRequest).remoteIP)
	}
	return negated(field, m)
}

// operationFieldMatcher is authz.rego's operation_field(field, patterns).
func operationFieldMatcher(field string, patterns []string) matcher {
	var m matcher
	switch positive(field) {
	case "hosts":
		lower := make([]string, len(patterns))
		for i, p := range patterns {
			lower[i] = strings.ToLower(p) // OPA's lower() is strings.ToLower
		}
		p := compilePatterns(lower)
		m = func(r *nativeRequest) bool { return slices.ContainsFunc(r.lowerHostForms(), p.match) }
	case "ports":
		m = func(r *nativeRequest) bool { return slices.Contains(patterns, r.destinationPort()) }
	case "methods":
		m = stringMatcher(patterns, (*nativeRequest).method)
	case "paths":
		m = stringMatcher(patterns, (*nativeRequest).path)
	}
	return negated(field, m)
}

// stringMatcher matches an attribute against Istio's string patterns.
func stringMatcher(patterns []string, attribute func(*nativeRequest) string) matcher {
	p := compilePatterns(patterns)
	return func(r *nativeRequest) bool { return p.match(attribute(r)) }
}

// blocksMatcher matches an address attribute against IP blocks.
func blocksMatcher(blocks []string, attribute func(*nativeRequest) string) matcher {
	b := compileBlocks(blocks)
	return func(r *nativeRequest) bool { return b.contain(attribute(r)) }
}

// positive is the field a not form negates ("notPaths": "paths").
func positive(field string) string {
	if rest, ok := strings.CutPrefix(field, "not"); ok && rest != "" {
		return strings.ToLower(rest[:1]) + rest[1:]
	}
	return field
}

// negated is m for a field, its negation for the field's not form ("notPaths").
func negated(field string, m matcher) matcher {
	if !strings.HasPrefix(field, "not") {
		return m
	}
	return func(r *nativeRequest) bool { return !m(r) }
}

// conditionMatcher is authz.rego's condition_matches(c): with values, one of the
// attribute's values matches one of them; with notValues, none matches any.
func conditionMatcher(c *security.Condition) matcher {
	kind, arg, _ := attributeOf(c.GetKey())
	values := conditionValues(c.GetKey(), arg)
	var some func(patterns []string) func([]string) bool
	switch kind {
	case kindIP:
		some = func(patterns []string) func([]string) bool {
			b := compileBlocks(patterns)
			return func(vs []string) bool { return slices.ContainsFunc(vs, b.contain) }
		}
	case kindPort:
		some = func(patterns []string) func([]string) bool {
			return func(vs []string) bool {
				return slices.ContainsFunc(vs, func(v string) bool { return slices.Contains(patterns, v) })
			}
		}
	default:
		some = func(patterns []string) func([]string) bool {
			p := compilePatterns(patterns)
			return func(vs []string) bool { return slices.ContainsFunc(vs, p.match) }
		}
	}
	wanted := func([]string) bool { return true }
	if vs := c.GetValues(); len(vs) > 0 {
		wanted = some(vs)
	}
	unwanted := func([]string) bool { return false }
	if nv := c.GetNotValues(); len(nv) > 0 {
		unwanted = some(nv)
	}
	return func(r *nativeRequest) bool {
		vs := values(r)
		return wanted(vs) && !unwanted(vs)
	}
}

// conditionValues is authz.rego's attribute(key)'s values: present() drops "",
// and values that are not strings (a claim's object, a number among the
// audiences) are dropped, since no pattern, IP block or port matches them.
func conditionValues(key string, arg []string) func(r *nativeRequest) []string {
	// The values are used at once: they are put in the request's scratch.
	present := func(get func(r *nativeRequest) string) func(r *nativeRequest) []string {
		return func(r *nativeRequest) []string {
			if v := get(r); v != "" {
				r.values = append(r.values[:0], v)
				return r.values
			}
			return nil
		}
	}
	switch key {
	case "source.ip":
		return present((*nativeRequest).sourceIP)
	case "remote.ip":
		return present((*nativeRequest).remoteIP)
	case "destination.ip":
		return present((*nativeRequest).destinationIP)
	case "destination.port":
		return present((*nativeRequest).destinationPort)
	case "source.namespace":
		return present((*nativeRequest).sourceNamespace)
	case "source.principal":
		return present((*nativeRequest).sourcePrincipal)
	case "request.auth.principal":
		return present(func(r *nativeRequest) string { return r.auth.principal })
	case "request.auth.audiences":
		return func(r *nativeRequest) []string { return r.auth.audiences }
	case "request.auth.presenter":
		return present(func(r *nativeRequest) string { return r.auth.presenter })
	case "connection.sni":
		return present(func(r *nativeRequest) string { return r.attrs.GetTlsSession().GetSni() })
	}
	if strings.HasPrefix(key, "request.headers[") {
		name := arg[0]
		return present(func(r *nativeRequest) string { return r.headers[name] })
	}
	path := make([]*ast.Term, len(arg))
	for i, a := range arg {
		path[i] = ast.StringTerm(a)
	}
	return func(r *nativeRequest) []string {
		r.values = appendClaimValues(r.values[:0], r.auth.claims, path)
		return r.values
	}
}

// appendClaimValues appends authz.rego's claim_values of the claim at path: a
// string is one value, a list one per string, number or boolean element, a
// number or boolean its JSON text (as json.marshal writes it), anything else
// none.
func appendClaimValues(out []string, claims ast.Object, path []*ast.Term) []string {
	if claims == nil || len(path) == 0 {
		return out
	}
	t := claims.Get(path[0])
	for _, k := range path[1:] {
		if t == nil {
			break
		}
		t = t.Get(k)
	}
	if t == nil {
		return out
	}
	if a, ok := t.Value.(*ast.Array); ok {
		for i := range a.Len() {
			if s, ok := scalarString(a.Elem(i).Value); ok {
				out = append(out, s)
			}
		}
		return out
	}
	if s, ok := scalarString(t.Value); ok {
		out = append(out, s)
	}
	return out
}

func scalarString(v ast.Value) (string, bool) {
	switch v := v.(type) {
	case ast.String:
		return string(v), true
	case ast.Number:
		return string(v), true // json.marshal writes a number's text as it is
	case ast.Boolean:
		return strconv.FormatBool(bool(v)), true
	}
	return "", false
}

// patterns are Istio's string patterns (match.rego's any_of): a value matches
// one exactly, or a prefix before a trailing "*", or a suffix after a leading
// "*" (both only when the value is not empty; "*" is the prefix ""). A pattern
// "" matches the value "" where an attribute has it (a path, an audience), and
// nothing where present() leaves "" out.
type patterns struct {
	exact, prefixes, suffixes []string
}

// compilePatterns compiles a field's patterns.
func compilePatterns(list []string) patterns {
	var p patterns
	for _, s := range list {
		p.exact = append(p.exact, s)
		if strings.HasSuffix(s, "*") {
			p.prefixes = append(p.prefixes, strings.TrimSuffix(s, "*"))
		}
		if strings.HasPrefix(s, "*") {
			p.suffixes = append(p.suffixes, strings.TrimPrefix(s, "*"))
		}
	}
	return p
}

func (p patterns) match(v string) bool {
	if slices.Contains(p.exact, v) {
		return true
	}
	if v == "" {
		return false
	}
	for _, s := range p.prefixes {
		if strings.HasPrefix(v, s) {
			return true
		}
	}
	for _, s := range p.suffixes {
		if strings.HasSuffix(v, s) {
			return true
		}
	}
	return false
}

// blocks are authz.rego's in_blocks: IPs and CIDRs (a bare IP is its /32 or
// /128), parsed as net.cidr_contains parses them; one that does not parse
// contains nothing.
type blocks struct {
	nets  []*net.IPNet // nil where the block does not parse
	cidrs []*ast.Term  // the blocks as CIDRs, for values that are CIDRs
}

func compileBlocks(list []string) blocks {
	var b blocks
	for _, block := range list {
		c := blockCIDR(block)
		_, n, _ := net.ParseCIDR(c)
		b.nets = append(b.nets, n)
		b.cidrs = append(b.cidrs, ast.StringTerm(c))
	}
	return b
}

var netCIDRContains = topdown.GetBuiltin(ast.NetCIDRContains.Name)

// contain is in_blocks(blocks, v): v is not empty and in one of the blocks. An
// address is tested as net.cidr_contains tests it; a value that is not an
// address (it may be a CIDR) is left to the built-in itself.
func (b blocks) contain(v string) bool {
	if v == "" {
		return false
	}
	if ip := net.ParseIP(v); ip != nil {
		for _, n := range b.nets {
			if n != nil && n.Contains(ip) {
				return true
			}
		}
		return false
	}
	vt := ast.StringTerm(v)
	for _, c := range b.cidrs {
		var in bool
		_ = netCIDRContains(topdown.BuiltinContext{Context: context.Background()}, []*ast.Term{c, vt}, func(t *ast.Term) error {
			in = t.Value.Compare(ast.Boolean(true)) == 0
			return nil
		}) // an error: not contained, as in Rego
		if in {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// The request's attributes, as authz.rego reads them from the input Input builds:
// computed when a matcher first asks.

type nativeRequest struct {
	attrs   *authv3.AttributeContext
	http    *authv3.AttributeContext_HttpRequest
	headers map[string]string
	auth    nativeAuth
	now     time.Time
	values  []string // scratch for a condition's values

	principal, namespace, remote string
	forms                        []string
	done                         uint8 // which of the above are computed
}

const (
	donePrincipal uint8 = 1 << iota
	doneNamespace
	doneRemote
	doneForms
)

// sourcePrincipal is the peer's identity without "spiffe://".
func (r *nativeRequest) sourcePrincipal() string {
	if r.done&donePrincipal == 0 {
		r.principal = strings.TrimPrefix(r.attrs.GetSource().GetPrincipal(), "spiffe://")
		r.done |= donePrincipal
	}
	return r.principal
}

// sourceNamespace is NS of the identity TD/ns/NS/sa/SA[/...], else "".
func (r *nativeRequest) sourceNamespace() string {
	if r.done&doneNamespace == 0 {
		parts := strings.SplitN(r.sourcePrincipal(), "/", 5)
		if len(parts) >= 4 && parts[1] == "ns" && parts[3] == "sa" {
			r.namespace = parts[2]
		}
		r.done |= doneNamespace
	}
	return r.namespace
}

func (r *nativeRequest) sourceIP() string {
	return r.attrs.GetSource().GetAddress().GetSocketAddress().GetAddress()
}

func (r *nativeRequest) destinationIP() string {
	return r.attrs.GetDestination().GetAddress().GetSocketAddress().GetAddress()
}

// destinationPort is the port as a string, "" without one (Input leaves out a
// port of 0 and named ports).
func (r *nativeRequest) destinationPort() string {
	if p := r.attrs.GetDestination().GetAddress().GetSocketAddress().GetPortValue(); p != 0 {
		return strconv.FormatUint(uint64(p), 10)
	}
	return ""
}

// remoteIP is x-envoy-external-address, else the first x-forwarded-for entry,
// else the peer's address.
func (r *nativeRequest) remoteIP() string {
	if r.done&doneRemote == 0 {
		r.remote = r.sourceIP()
		if ip := strings.TrimSpace(r.headers["x-envoy-external-address"]); ip != "" {
			r.remote = ip
		} else if xff, ok := r.headers["x-forwarded-for"]; ok {
			first, _, _ := strings.Cut(xff, ",")
			if ip := strings.TrimSpace(first); ip != "" {
				r.remote = ip
			}
		}
		r.done |= doneRemote
	}
	return r.remote
}

func (r *nativeRequest) method() string { return r.http.GetMethod() }

// path is the request's path without the query string.
func (r *nativeRequest) path() string {
	p, _, _ := strings.Cut(r.http.GetPath(), "?")
	return p
}

// lowerHostForms are the host as sent and without its port, if it has one,
// lower-cased (hosts match ignoring case).
func (r *nativeRequest) lowerHostForms() []string {
	if r.done&doneForms == 0 {
		host := r.http.GetHost()
		r.forms = append(r.forms[:0], host)
		// "example.com:8080": split in exactly two, the second digits.
		if h, port, ok := strings.Cut(host, ":"); ok && !strings.Contains(port, ":") && digits(port) {
			r.forms = append(r.forms, h)
		}
		// "[::1]:8080": the first "]:", after the start.
		if strings.HasPrefix(host, "[") {
			if i := strings.Index(host, "]:"); i > 0 && digits(host[i+2:]) {
				r.forms = append(r.forms, host[:i+1])
			}
		}
		for i, f := range r.forms {
			r.forms[i] = strings.ToLower(f)
		}
		r.done |= doneForms
	}
	return r.forms
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Deciding.

// decide is decision.rego's decision for req, at time now (the JWTs' clock).
func (d *nativeDecision) decide(req *authv3.CheckRequest, now time.Time) Decision {
	attrs := req.GetAttributes()
	r := &nativeRequest{attrs: attrs, http: attrs.GetRequest().GetHttp(), now: now}
	r.headers = httpHeaders(r.http)
	var jwt jwtResult
	if d.jwt != nil {
		jwt = d.jwt.evaluate(r)
		// 1. An invalid JWT denies (401).
		if jwt.denied {
			return Decision{
				HTTPStatus: http.StatusUnauthorized, Headers: []Header{{"www-authenticate", wwwAuthenticate(r.http)}},
				Body: jwt.reason, Reason: jwt.reason, Reasons: jwt.reasons,
			}
		}
		r.auth = jwt.auth
	}
	// The matches' reasons are collected on the stack; the decision's reasons are
	// one slice.
	var auditBuf, denyBuf, allowBuf [8]any
	audit, _ := matches(d.audit, r, auditBuf[:0])
	// 3. A matching DENY policy denies.
	if deny, first := matches(d.deny, r, denyBuf[:0]); len(deny) > 0 {
		return Decision{
			HTTPStatus: http.StatusForbidden, Body: "RBAC: access denied", Reason: first.decided,
			Reasons: slices.Concat(jwt.reasons, deny, audit),
		}
	}
	// 4. ALLOW policies apply and none matched.
	allow, first := matches(d.allow, r, allowBuf[:0])
	if len(d.allow) > 0 && len(allow) == 0 {
		return Decision{
			HTTPStatus: http.StatusForbidden, Body: "RBAC: access denied", Reason: "no ALLOW policy matched",
			Reasons: slices.Concat(jwt.reasons, audit, d.noMatch),
		}
	}
	reason := "allowed: no ALLOW policy applies"
	if len(allow) > 0 {
		reason = first.decided
	}
	dec := Decision{Allowed: true, HTTPStatus: http.StatusOK, Reason: reason, Reasons: slices.Concat(jwt.reasons, audit, allow)}
	if r.auth.defined {
		dec.Headers, dec.RequestHeadersToRemove = jwt.headers, jwt.remove
	}
	return dec
}

// matches appends to reasons those of the policies (sorted by "NS/NAME") that
// the request matches, each with its first matching rule, and returns the first
// such policy.
func matches(policies []nativePolicy, r *nativeRequest, reasons []any) (_ []any, first *nativePolicy) {
	for i := range policies {
		p := &policies[i]
		for _, rule := range p.rules {
			if all(rule.match, r) {
				if first == nil {
					first = p
				}
				reasons = append(reasons, rule.reason)
				break
			}
		}
	}
	return reasons, first
}

// wwwAuthenticate is the header Envoy's jwt_authn filter sends with its 401.
func wwwAuthenticate(h *authv3.AttributeContext_HttpRequest) string {
	scheme, path := h.GetScheme(), h.GetPath()
	if scheme == "" {
		scheme = "http"
	}
	if path == "" {
		path = "/"
	}
	path, _, _ = strings.Cut(path, "?")
	return `Bearer realm="` + scheme + "://" + h.GetHost() + path + `", error="invalid_token"`
}
