package config

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	security "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// This file holds Istio's rules for AuthorizationPolicy and RequestAuthentication
// (istio.io/latest/docs/reference/config/security/), as istiod's validation and the
// CRDs' schemas apply them, with the limits of Palisade, rejected rather than ignored
// (ignored, a DENY rule would deny less than it says): policies select workloads with
// spec.selector only (targetRef and targetRefs, which attach policies to Gateway API
// resources, are not supported); sources have no serviceAccounts or trustDomains
// (principals say the same); paths have no templates ({*}, {**}); JWT rules have no
// presence REQUIRED and no spaceDelimitedClaims.

// authorizationPolicy checks an AuthorizationPolicy.
func (v *validator) authorizationPolicy(s *security.AuthorizationPolicy) {
	v.workloadSelector("spec.selector", s.Selector)
	v.targetRefs(s.TargetRef, s.TargetRefs)
	custom := s.Action == security.AuthorizationPolicy_CUSTOM
	switch {
	case custom && s.GetProvider().GetName() == "":
		v.errorf("spec.provider.name", "action CUSTOM needs the name of the provider that decides")
	case !custom && s.GetProvider() != nil:
		v.errorf("spec.provider", "only allowed with action CUSTOM, not %s", s.Action)
	}
	switch {
	case custom && s.Rules == nil:
		v.errorf("spec.rules", "a CUSTOM policy without rules never applies; add an empty rule {} to apply it to every request")
	case s.Action == security.AuthorizationPolicy_DENY && s.Rules == nil:
		v.errorf("spec.rules", "a DENY policy without rules never applies; add an empty rule {} to deny every request")
	case len(s.Rules) > 512:
		v.errorf("spec.rules", "%d rules, more than the 512 allowed", len(s.Rules))
	}
	for i, r := range s.Rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		if r == nil {
			v.errorf(f, "rule is null (use {} for a rule that matches every request)")
			continue
		}
		for j, from := range r.From {
			ff := fmt.Sprintf("%s.from[%d].source", f, j)
			if from.GetSource() == nil {
				v.errorf(ff, "source is required")
				continue
			}
			v.source(ff, from.Source, custom)
		}
		for j, to := range r.To {
			tf := fmt.Sprintf("%s.to[%d].operation", f, j)
			if to.GetOperation() == nil {
				v.errorf(tf, "operation is required")
				continue
			}
			v.operation(tf, to.Operation)
		}
		for j, c := range r.When {
			v.condition(fmt.Sprintf("%s.when[%d]", f, j), c, custom)
		}
	}
}

// targetRefs rejects targetRef and targetRefs: they attach a policy to Gateway API
// resources (a Gateway, a Service for waypoints), which Palisade does not have. An
// error rather than a warning: ignored, the policy would apply to every workload of
// its namespace instead of the ones it names.
func (v *validator) targetRefs(ref *typev1beta1.PolicyTargetReference, refs []*typev1beta1.PolicyTargetReference) {
	const why = "not supported: Palisade attaches policies to workloads with spec.selector only"
	if ref != nil {
		v.errorf("spec.targetRef", why)
	}
	if len(refs) > 0 {
		v.errorf("spec.targetRefs", why)
	}
}

// customUnsupported is the message for the fields Istio does not allow in CUSTOM
// policies.
const customUnsupported = "not supported with action CUSTOM (as in Istio)"

func (v *validator) source(f string, s *security.Source, custom bool) {
	lists := []struct {
		name     string
		values   []string
		kind     listKind
		noCustom bool // Istio rejects it in CUSTOM policies
	}{
		{"principals", s.Principals, patterns, true},
		{"notPrincipals", s.NotPrincipals, patterns, true},
		{"requestPrincipals", s.RequestPrincipals, patterns, true},
		{"notRequestPrincipals", s.NotRequestPrincipals, patterns, true},
		{"namespaces", s.Namespaces, patterns, true},
		{"notNamespaces", s.NotNamespaces, patterns, true},
		{"ipBlocks", s.IpBlocks, ipBlocks, false},
		{"notIpBlocks", s.NotIpBlocks, ipBlocks, false},
		{"remoteIpBlocks", s.RemoteIpBlocks, ipBlocks, false},
		{"notRemoteIpBlocks", s.NotRemoteIpBlocks, ipBlocks, false},
	}
	// Fields the policy engine does not implement.
	for _, l := range []struct {
		name   string
		values []string
		use    string
	}{
		{"serviceAccounts", s.ServiceAccounts, "principals: [TRUST_DOMAIN/ns/NAMESPACE/sa/NAME]"},
		{"notServiceAccounts", s.NotServiceAccounts, "notPrincipals: [TRUST_DOMAIN/ns/NAMESPACE/sa/NAME]"},
		{"trustDomains", s.TrustDomains, "principals: [TRUST_DOMAIN/*]"},
		{"notTrustDomains", s.NotTrustDomains, "notPrincipals: [TRUST_DOMAIN/*]"},
	} {
		if len(l.values) > 0 {
			v.errorf(f+"."+l.name, "not supported by Palisade yet; use %s", l.use)
		}
	}
	empty := true
	for _, l := range lists {
		if len(l.values) == 0 {
			continue
		}
		empty = false
		lf := f + "." + l.name
		v.list(lf, l.values, l.kind)
		if custom && l.noCustom {
			v.errorf(lf, customUnsupported)
		}
	}
	if empty && len(s.ServiceAccounts)+len(s.NotServiceAccounts)+len(s.TrustDomains)+len(s.NotTrustDomains) == 0 {
		v.errorf(f, "a source needs at least one field (leave the source out to match any)")
	}
}

func (v *validator) operation(f string, o *security.Operation) {
	lists := []struct {
		name   string
		values []string
		kind   listKind
	}{
		{"hosts", o.Hosts, patterns},
		{"notHosts", o.NotHosts, patterns},
		{"ports", o.Ports, ports},
		{"notPorts", o.NotPorts, ports},
		{"methods", o.Methods, plain},
		{"notMethods", o.NotMethods, plain},
		{"paths", o.Paths, paths},
		{"notPaths", o.NotPaths, paths},
	}
	empty := true
	for _, l := range lists {
		if len(l.values) > 0 {
			empty = false
			v.list(f+"."+l.name, l.values, l.kind)
		}
	}
	if empty {
		v.errorf(f, "an operation needs at least one field (leave the operation out to match any)")
	}
}

// listKind says how the values of a string list are checked.
type listKind int

const (
	plain    listKind = iota // any value but ""
	patterns                 // Istio's string match: exact, prefix*, *suffix or *
	paths                    // patterns that are paths
	ports                    // port numbers
	ipBlocks                 // IP addresses or CIDRs
)

// list checks the values of list field f; every value must be non-empty.
func (v *validator) list(f string, values []string, kind listKind) {
	for i, s := range values {
		vf := fmt.Sprintf("%s[%d]", f, i)
		if s == "" {
			v.errorf(vf, "must not be empty")
			continue
		}
		switch kind {
		case patterns:
			v.pattern(vf, s)
		case paths:
			switch {
			case strings.ContainsAny(s, "{}"):
				v.errorf(vf, "%q: path templates ({*}, {**}) are not supported", s)
			case !strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "*"):
				v.errorf(vf, "%q: a path must start with / (or be *, or *suffix)", s)
			default:
				v.pattern(vf, s)
			}
		case ports:
			v.portString(vf, s)
		case ipBlocks:
			if _, err := ParseAddress(s); err != nil {
				v.errorf(vf, "%v", err)
			}
		}
	}
}

// pattern checks one value of an Istio string match: Istio matches exactly, by
// prefix ("abc*"), by suffix ("*abc") or by presence ("*"); a * anywhere else would
// be matched literally, which is never what was meant.
func (v *validator) pattern(f, s string) {
	n := strings.Count(s, "*")
	if n == 0 || s == "*" || n == 1 && (s[0] == '*' || s[len(s)-1] == '*') {
		return
	}
	v.errorf(f, "%q: a wildcard * is only allowed as a prefix (*abc) or a suffix (abc*), or alone", s)
}

// portString checks a port given as a string, as AuthorizationPolicy has them.
func (v *validator) portString(f, s string) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		v.errorf(f, "%q is not a port number 1-65535", s)
	}
}

// The keys of conditions, but for those that name a header or a claim in brackets,
// and how their values are checked (any, when the kind is plain: Istio allows even
// "").
var conditionKeys = map[string]listKind{
	"source.ip":              ipBlocks,
	"remote.ip":              ipBlocks,
	"source.namespace":       plain,
	"source.principal":       plain,
	"request.auth.principal": plain,
	"request.auth.audiences": plain,
	"request.auth.presenter": plain,
	"destination.ip":         ipBlocks,
	"destination.port":       ports,
	"connection.sni":         plain,
}

const conditionKeyList = "request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni"

// bracketed matches what follows request.headers or request.auth.claims: one name
// in brackets, or for claims several, a nested claim ([a][b]).
var bracketed = regexp.MustCompile(`^(\[[^\[\]]+\])+$`)

func (v *validator) condition(f string, c *security.Condition, custom bool) {
	if c == nil {
		v.errorf(f, "condition is null")
		return
	}
	kind, known := conditionKeys[c.Key]
	switch rest, isClaim := strings.CutPrefix(c.Key, "request.auth.claims"); {
	case c.Key == "":
		v.errorf(f+".key", "key is required")
	case strings.HasPrefix(c.Key, "experimental.envoy.filters."):
		v.errorf(f+".key", "%q: experimental.envoy.filters.* keys are not supported", c.Key)
	case strings.HasPrefix(c.Key, "request.headers"):
		if rest := strings.TrimPrefix(c.Key, "request.headers"); !bracketed.MatchString(rest) || strings.Count(rest, "[") != 1 {
			v.errorf(f+".key", "%q: a header is named in brackets, request.headers[NAME]", c.Key)
		}
	case isClaim:
		if !bracketed.MatchString(rest) {
			v.errorf(f+".key", "%q: a claim is named in brackets, request.auth.claims[NAME] (nested: [NAME][NAME])", c.Key)
		}
	case !known:
		v.errorf(f+".key", "unknown key %q (use one of %s)", c.Key, conditionKeyList)
	}
	if custom && (c.Key == "source.namespace" || c.Key == "source.principal" || strings.HasPrefix(c.Key, "request.auth.")) {
		v.errorf(f+".key", "%q: %s", c.Key, customUnsupported)
	}
	if len(c.Values) == 0 && len(c.NotValues) == 0 {
		v.errorf(f, "a condition needs values or notValues")
	}
	if kind != plain {
		v.list(f+".values", c.Values, kind)
		v.list(f+".notValues", c.NotValues, kind)
	}
}

// requestAuthentication checks a RequestAuthentication.
func (v *validator) requestAuthentication(s *security.RequestAuthentication) {
	v.workloadSelector("spec.selector", s.Selector)
	v.targetRefs(s.TargetRef, s.TargetRefs)
	if len(s.JwtRules) > 4096 {
		v.errorf("spec.jwtRules", "%d rules, more than the 4096 allowed", len(s.JwtRules))
	}
	for i, r := range s.JwtRules {
		f := fmt.Sprintf("spec.jwtRules[%d]", i)
		if r == nil {
			v.errorf(f, "rule is null")
			continue
		}
		v.jwtRule(f, r)
	}
}

// headerName is the CRD's pattern for outputClaimToHeaders[].header.
var headerName = regexp.MustCompile(`^[-_A-Za-z0-9]+$`)

func (v *validator) jwtRule(f string, r *security.JWTRule) {
	if r.Issuer == "" {
		v.errorf(f+".issuer", "issuer is required")
	}
	v.list(f+".audiences", r.Audiences, plain)
	if r.Jwks != "" && r.JwksUri != "" {
		v.errorf(f+".jwks", "only one of jwks and jwksUri may be set")
	}
	if r.JwksUri != "" {
		u, err := url.Parse(r.JwksUri)
		switch {
		case err != nil:
			v.errorf(f+".jwksUri", "%q is not a URL", r.JwksUri)
		case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
			v.errorf(f+".jwksUri", "%q is not an http:// or https:// URL", r.JwksUri)
		case len(r.JwksUri) > 2048:
			v.errorf(f+".jwksUri", "longer than 2048 characters")
		}
	}
	if r.Jwks != "" {
		if err := checkJWKS(r.Jwks); err != nil {
			v.errorf(f+".jwks", "%v", err)
		}
	}
	for j, h := range r.FromHeaders {
		if h.GetName() == "" {
			v.errorf(fmt.Sprintf("%s.fromHeaders[%d].name", f, j), "header name is required")
		}
	}
	v.list(f+".fromParams", r.FromParams, plain)
	v.list(f+".fromCookies", r.FromCookies, plain)
	for j, c := range r.OutputClaimToHeaders {
		cf := fmt.Sprintf("%s.outputClaimToHeaders[%d]", f, j)
		if c.GetClaim() == "" {
			v.errorf(cf+".claim", "claim is required")
		}
		if h := c.GetHeader(); !headerName.MatchString(h) {
			v.errorf(cf+".header", "%q is not a header name (letters, digits, '-' and '_')", h)
		}
	}
	if len(r.SpaceDelimitedClaims) > 0 {
		v.errorf(f+".spaceDelimitedClaims", "not supported by Palisade yet: claims are matched as they are in the token")
	}
	if r.Presence == security.JWTRule_REQUIRED {
		v.errorf(f+".presence", `REQUIRED is not supported by Palisade yet; to reject requests without a token, add an AuthorizationPolicy with requestPrincipals: ["*"] (ALLOW) or notRequestPrincipals: ["*"] (DENY)`)
	}
	v.duration(f+".timeout", r.Timeout)
}

// checkJWKS checks that s is a JSON Web Key Set: {"keys": [KEY, ...]} with at least
// one key, each an object with its key type ("kty").
func checkJWKS(s string) error {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	if len(set.Keys) == 0 {
		return fmt.Errorf(`not a JSON Web Key Set: no keys (want {"keys": [...]})`)
	}
	for i, raw := range set.Keys {
		var key struct {
			Kty string `json:"kty"`
		}
		if err := json.Unmarshal(raw, &key); err != nil || key.Kty == "" {
			return fmt.Errorf("keys[%d] is not a JSON Web Key (an object with kty)", i)
		}
	}
	return nil
}
