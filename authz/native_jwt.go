package authz

import (
	"context"
	"encoding/json"
	"maps"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// The native form of jwt.rego: the tokens of the request that the applicable
// jwtRules read, their validation, request.auth and what the decision reports.
// Decoding and verification are OPA's built-ins, called directly; what they
// found is cached per token (see jwtCache).

// nativeJWT is jwt.rego for the RequestAuthentications that apply to a workload.
type nativeJWT struct {
	policies []string        // "NS/NAME" of the RequestAuthentications, sorted
	rules    []nativeJWTRule // their jwtRules, in the library's order of [NS/NAME, index]
	cache    *jwtCache       // shared by the policy's native decisions
}

type nativeJWTRule struct {
	policy          string
	issuer          string
	jwks            *ast.Term // nil: no JWKS (none given, or jwksUri not fetched)
	audiences       []string
	locations       []jwtLocation
	forwardOriginal bool
	payloadHeader   string // outputPayloadToHeader
}

func compileJWT(policies []string, rules []jwtRule, cache *jwtCache) *nativeJWT {
	j := &nativeJWT{policies: policies, cache: cache}
	slices.Sort(j.policies)
	for _, r := range rules {
		nr := nativeJWTRule{
			policy: r.id, issuer: r.rule.GetIssuer(), audiences: r.rule.GetAudiences(),
			locations: jwtLocations(r.rule), forwardOriginal: r.rule.GetForwardOriginalToken(),
			payloadHeader: r.rule.GetOutputPayloadToHeader(),
		}
		if jwks := r.rule.GetJwks(); jwks != "" {
			nr.jwks = ast.StringTerm(jwks)
		}
		j.rules = append(j.rules, nr)
	}
	return j
}

// extraction is a token found where rule reads one: in header (lower case), or
// in a query parameter or cookie (header "").
type extraction struct {
	token  string
	rule   int
	header string
}

// nativeAuth is request.auth.* of the valid token; zero without one.
type nativeAuth struct {
	defined              bool
	principal, presenter string
	audiences            []string // the string ones: no pattern matches another
	claims               ast.Object
}

// jwtResult is what the decision needs of jwt.rego.
type jwtResult struct {
	denied  bool
	reason  string
	reasons []any
	auth    nativeAuth
	headers []Header // request_headers, by name
	remove  []string // request_headers_to_remove, sorted
}

func (j *nativeJWT) evaluate(r *nativeRequest) jwtResult {
	var found []extraction
	var query url.Values
	for k, rule := range j.rules {
		for _, loc := range rule.locations {
			switch {
			case loc.header != "":
				if t, ok := headerToken(r.headers, loc.header, loc.prefix); ok {
					found = append(found, extraction{t, k, loc.header})
				}
			case loc.param != "":
				if query == nil {
					query = queryOf(r.http.GetPath())
				}
				for _, t := range query[loc.param] {
					if t != "" {
						found = append(found, extraction{t, k, ""})
					}
				}
			default:
				for _, t := range cookieTokens(r.headers, loc.cookie) {
					found = append(found, extraction{t, k, ""})
				}
			}
		}
	}
	if len(found) == 0 {
		return jwtResult{}
	}
	// valid: the claims of each token that a rule of its issuer, reading where the
	// token was found, accepts.
	valid := map[string]ast.Object{}
	for _, e := range found {
		if _, done := valid[e.token]; done {
			continue
		}
		if claims, ok := j.verify(e.token, &j.rules[e.rule], r.now); ok {
			valid[e.token] = claims
		}
	}
	var failed string // the first invalid token in sort order
	for _, e := range found {
		if _, ok := valid[e.token]; !ok && (failed == "" || e.token < failed) {
			failed = e.token
		}
	}
	if failed != "" {
		return j.denial(found, failed)
	}

	var res jwtResult
	authToken := slices.Min(slices.Collect(maps.Keys(valid)))
	claims := valid[authToken]
	iss, _ := claims.Get(ast.InternedTerm("iss")).Value.(ast.String)
	sub := ast.String("")
	if t := claims.Get(ast.InternedTerm("sub")); t != nil {
		s, ok := t.Value.(ast.String)
		if !ok {
			return res // concat fails: request.auth is undefined
		}
		sub = s
	}
	res.auth = nativeAuth{defined: true, principal: string(iss) + "/" + string(sub), claims: claims}
	if t := claims.Get(ast.InternedTerm("azp")); t != nil {
		if s, ok := t.Value.(ast.String); ok { // another value matches no pattern
			res.auth.presenter = string(s)
		}
	}
	for _, a := range audiences(claims) {
		if s, ok := a.Value.(ast.String); ok {
			res.auth.audiences = append(res.auth.audiences, string(s))
		}
	}
	var validating []string
	headers := map[string]string{}
	for _, e := range found {
		rule := &j.rules[e.rule]
		if e.token == authToken && rule.issuer == string(iss) {
			validating = append(validating, rule.policy)
		}
		if e.header != "" && !rule.forwardOriginal {
			res.remove = append(res.remove, e.header) // every token here is valid
		}
		if e.token == authToken && rule.payloadHeader != "" {
			if parts := strings.Split(e.token, "."); len(parts) > 1 {
				headers[rule.payloadHeader] = parts[1]
			}
		}
	}
	for _, id := range sortedSet(validating) {
		res.reasons = append(res.reasons, map[string]any{
			"kind": "RequestAuthentication", "policy": id, "effect": "allow",
			"principal": res.auth.principal, "detail": res.auth.principal,
		})
	}
	res.remove = sortedSet(res.remove)
	for _, name := range slices.Sorted(maps.Keys(headers)) {
		res.headers = append(res.headers, Header{name, headers[name]})
	}
	return res
}

// denial is jwt.rego's reason and reasons for the invalid token failed.
func (j *nativeJWT) denial(found []extraction, failed string) jwtResult {
	unverified, decoded := j.cache.decode(failed)
	var ids []string
	configured := false // a rule reading where failed was found has its issuer
	for _, e := range found {
		if e.token == failed && decoded && issuerIs(unverified, j.rules[e.rule].issuer) {
			configured = true
			ids = append(ids, j.rules[e.rule].policy)
		}
	}
	reason := "Jwt verification fails"
	if !configured {
		ids = j.policies
		if decoded {
			reason = "Jwt issuer is not configured"
		}
	}
	var issuer any = ""
	if decoded {
		if t := unverified.Get(ast.InternedTerm("iss")); t != nil {
			issuer, _ = ast.JSON(t.Value)
		}
	}
	res := jwtResult{denied: true, reason: reason}
	for _, id := range sortedSet(ids) {
		res.reasons = append(res.reasons, map[string]any{
			"kind": "RequestAuthentication", "policy": id, "effect": "deny", "detail": reason, "issuer": issuer,
		})
	}
	return res
}

// issuerIs: the token's unverified claims have iss equal to the rule's issuer
// (a rule without issuer has none: its issuer is absent from the data).
func issuerIs(claims ast.Object, issuer string) bool {
	if issuer == "" {
		return false
	}
	t := claims.Get(ast.InternedTerm("iss"))
	return t != nil && t.Value.Compare(ast.String(issuer)) == 0
}

// verify is jwt.rego's valid[token] for one rule: the token's issuer is the
// rule's, io.jwt.decode_verify accepts it with the rule's JWKS and issuer (and
// the token's first audience, see jwt.rego's constraints) at time now, and the
// rule accepts one of its audiences.
func (j *nativeJWT) verify(token string, rule *nativeJWTRule, now time.Time) (ast.Object, bool) {
	unverified, ok := j.cache.decode(token)
	if !ok || !issuerIs(unverified, rule.issuer) || rule.jwks == nil {
		return nil, false
	}
	claims, ok := j.cache.decodeVerify(token, rule, unverified, now)
	if !ok {
		return nil, false
	}
	if len(rule.audiences) == 0 {
		return claims, true
	}
	for _, a := range audiences(claims) {
		if s, ok := a.Value.(ast.String); ok && slices.Contains(rule.audiences, string(s)) {
			return claims, true
		}
	}
	return nil, false
}

// audiences is the aud claim as a list (jwt.rego's audiences).
func audiences(claims ast.Object) []*ast.Term {
	t := claims.Get(ast.InternedTerm("aud"))
	if t == nil {
		return nil
	}
	switch v := t.Value.(type) {
	case ast.String:
		return []*ast.Term{t}
	case *ast.Array:
		out := make([]*ast.Term, v.Len())
		for i := range v.Len() {
			out[i] = v.Elem(i)
		}
		return out
	}
	return nil
}

// headerToken is jwt.rego's header_token: the token in header name after prefix.
func headerToken(headers map[string]string, name, prefix string) (string, bool) {
	v, ok := headers[name]
	if !ok || !strings.HasPrefix(v, prefix) {
		return "", false
	}
	t := strings.TrimSpace(v[len(prefix):])
	return t, t != ""
}

// queryOf is input.parsed_query as Input builds it.
func queryOf(target string) url.Values {
	_, raw, _ := strings.Cut(target, "?")
	if raw == "" {
		return url.Values{}
	}
	values, _ := url.ParseQuery(raw) // keeps what parses, as Input does
	return values
}

// cookieTokens is jwt.rego's cookie_tokens(name).
func cookieTokens(headers map[string]string, name string) []string {
	c, ok := headers["cookie"]
	if !ok {
		return nil
	}
	var out []string
	for pair := range strings.SplitSeq(c, ";") {
		parts := strings.Split(strings.TrimSpace(pair), "=")
		if len(parts) == 2 && parts[0] == name && parts[1] != "" {
			out = append(out, parts[1])
		}
	}
	return out
}

func sortedSet(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// ---------------------------------------------------------------------------
// The cache of decoded and verified tokens.

// jwtCache keeps, per token, what io.jwt.decode gave and what io.jwt.decode_verify
// accepted for each rule, so that a token seen before costs lookups. An accepted
// token is reused only while the clock stays between its nbf and exp (more than
// a second from either, where float rounding cannot decide differently);
// rejections are not kept (OPA's verification cache is not used here, so a bad
// signature is checked again each time). It holds at most jwtCacheEntries tokens
// of each kind, and starts over when full.
type jwtCache struct {
	mu       sync.RWMutex
	decoded  map[string]decodedToken
	verified map[verifiedKey]verifiedToken
}

const jwtCacheEntries = 10000

type decodedToken struct {
	claims ast.Object
	ok     bool
}

type verifiedKey struct {
	token        string
	issuer, jwks string
}

type verifiedToken struct {
	claims   ast.Object
	nbf, exp float64 // seconds; -Inf and +Inf when absent
}

func newJWTCache() *jwtCache {
	return &jwtCache{decoded: map[string]decodedToken{}, verified: map[verifiedKey]verifiedToken{}}
}

var (
	jwtDecode       = topdown.GetBuiltin(ast.JWTDecode.Name)
	jwtDecodeVerify = topdown.GetBuiltin(ast.JWTDecodeVerify.Name)
)

// decode is io.jwt.decode(token)'s payload; ok is false where it fails.
func (c *jwtCache) decode(token string) (ast.Object, bool) {
	c.mu.RLock()
	d, hit := c.decoded[token]
	c.mu.RUnlock()
	if hit {
		return d.claims, d.ok
	}
	_ = jwtDecode(topdown.BuiltinContext{Context: context.Background()}, []*ast.Term{ast.StringTerm(token)}, func(t *ast.Term) error {
		if a, ok := t.Value.(*ast.Array); ok && a.Len() == 3 {
			d.claims, d.ok = a.Elem(1).Value.(ast.Object)
		}
		return nil
	}) // an error: not a JWT, no claims
	c.mu.Lock()
	if len(c.decoded) >= jwtCacheEntries {
		clear(c.decoded)
	}
	c.decoded[token] = d
	c.mu.Unlock()
	return d.claims, d.ok
}

// decodeVerify is jwt.rego's io.jwt.decode_verify(token, constraints(rule,
// unverified)) at time now: the verified claims, ok when it accepts the token.
func (c *jwtCache) decodeVerify(token string, rule *nativeJWTRule, unverified ast.Object, now time.Time) (ast.Object, bool) {
	key := verifiedKey{token, rule.issuer, string(rule.jwks.Value.(ast.String))}
	sec := float64(now.UnixNano()) / 1e9
	c.mu.RLock()
	v, hit := c.verified[key]
	c.mu.RUnlock()
	if hit && v.nbf+1 <= sec && sec < v.exp-1 {
		return v.claims, true
	}
	constraints := ast.NewObject(
		ast.Item(ast.InternedTerm("cert"), rule.jwks),
		ast.Item(ast.InternedTerm("iss"), ast.StringTerm(rule.issuer)),
		ast.Item(ast.InternedTerm("time"), ast.NumberTerm(jsonInt(now.UnixNano()))),
	)
	if aud := audiences(unverified); len(aud) > 0 {
		constraints.Insert(ast.InternedTerm("aud"), aud[0])
	}
	var claims ast.Object
	_ = jwtDecodeVerify(topdown.BuiltinContext{Context: context.Background()}, []*ast.Term{ast.StringTerm(token), ast.NewTerm(constraints)}, func(t *ast.Term) error {
		if a, ok := t.Value.(*ast.Array); ok && a.Len() == 3 && a.Elem(0).Value.Compare(ast.Boolean(true)) == 0 {
			claims, _ = a.Elem(2).Value.(ast.Object)
		}
		return nil
	}) // an error (a malformed token, a bad constraint): not accepted
	if claims == nil {
		return nil, false
	}
	v = verifiedToken{claims: claims, nbf: timeClaim(claims, "nbf", math.Inf(-1)), exp: timeClaim(claims, "exp", math.Inf(1))}
	c.mu.Lock()
	if len(c.verified) >= jwtCacheEntries {
		clear(c.verified)
	}
	c.verified[key] = v
	c.mu.Unlock()
	return claims, true
}

// timeClaim is a numeric claim in seconds, absent when it is not there (an
// accepted token's exp and nbf are numbers). One that does not parse as a float
// makes the cached entry unusable, so the built-in decides each time.
func timeClaim(claims ast.Object, name string, absent float64) float64 {
	t := claims.Get(ast.InternedTerm(name))
	if t == nil {
		return absent
	}
	n, ok := t.Value.(ast.Number)
	if !ok {
		return math.NaN()
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

func jsonInt(n int64) json.Number { return json.Number(strconv.FormatInt(n, 10)) }
