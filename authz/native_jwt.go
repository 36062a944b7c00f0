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
	j := &nativeJWT{policies: slices.Sorted(slices.Values(policies)), cache: cache}
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

// validToken is a token of the request that a rule accepts.
type validToken struct {
	token string
	v     *verifiedToken
}

func validIndex(valid []validToken, token string) int {
	for i, x := range valid {
		if x.token == token {
			return i
		}
	}
	return -1
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
	var foundBuf [4]extraction // a request has a token or two: kept on the stack
	found := foundBuf[:0]
	var query url.Values
	parsed := false
	for k, rule := range j.rules {
		for _, loc := range rule.locations {
			switch {
			case loc.header != "":
				if t, ok := headerToken(r.headers, loc.header, loc.prefix); ok {
					found = append(found, extraction{t, k, loc.header})
				}
			case loc.param != "":
				if !parsed {
					query, parsed = targetQuery(r.http.GetPath()), true
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
	// valid: each token that a rule of its issuer, reading where the token was
	// found, accepts (normally one token).
	var validBuf [4]validToken
	valid := validBuf[:0]
	for _, e := range found {
		if validIndex(valid, e.token) >= 0 {
			continue
		}
		if v := j.verify(e.token, &j.rules[e.rule], r.now); v != nil {
			valid = append(valid, validToken{e.token, v})
		}
	}
	var failed string // the first invalid token in sort order
	for _, e := range found {
		if validIndex(valid, e.token) < 0 && (failed == "" || e.token < failed) {
			failed = e.token
		}
	}
	if failed != "" {
		return j.denial(found, failed)
	}

	var res jwtResult
	auth := slices.MinFunc(valid, func(a, b validToken) int { return strings.Compare(a.token, b.token) })
	res.auth = auth.v.auth
	if !res.auth.defined {
		return res
	}
	var validating []string
	var headers map[string]string
	for _, e := range found {
		rule := &j.rules[e.rule]
		if e.token == auth.token && rule.issuer == auth.v.issuer {
			validating = append(validating, rule.policy)
		}
		if e.header != "" && !rule.forwardOriginal {
			res.remove = append(res.remove, e.header) // every token here is valid
		}
		if e.token == auth.token && rule.payloadHeader != "" {
			if parts := strings.Split(e.token, "."); len(parts) > 1 {
				if headers == nil {
					headers = map[string]string{}
				}
				headers[rule.payloadHeader] = parts[1]
			}
		}
	}
	for _, id := range sortedSet(validating) {
		res.reasons = append(res.reasons, auth.v.reason(id))
	}
	res.remove = sortedSet(res.remove)
	for _, name := range slices.Sorted(maps.Keys(headers)) {
		res.headers = append(res.headers, Header{name, headers[name]})
	}
	return res
}

// denial is jwt.rego's reason and reasons for the invalid token failed.
func (j *nativeJWT) denial(found []extraction, failed string) jwtResult {
	d := j.cache.decode(failed)
	unverified, decoded := d.claims, d.ok
	var ids []string
	configured := false // a rule reading where failed was found has its issuer
	for _, e := range found {
		if e.token == failed && decoded && issuerIs(unverified, j.rules[e.rule].issuer) {
			configured = true
			ids = append(ids, j.rules[e.rule].policy)
		}
	}
	reason := "Jwt verification fails"
	ids = sortedSet(ids)
	if !configured {
		ids = j.policies // sorted
		if decoded {
			reason = "Jwt issuer is not configured"
		}
	}
	var issuer any = ""
	if decoded {
		if t := unverified.Get(termIss); t != nil {
			issuer, _ = ast.JSON(t.Value)
		}
	}
	res := jwtResult{denied: true, reason: reason}
	for _, id := range ids {
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
	t := claims.Get(termIss)
	if t == nil {
		return false
	}
	iss, ok := t.Value.(ast.String)
	return ok && string(iss) == issuer
}

// Terms of the claims and constraints read, made once.
var (
	termIss, termSub, termAzp, termAud = ast.StringTerm("iss"), ast.StringTerm("sub"), ast.StringTerm("azp"), ast.StringTerm("aud")
	termCty, termCert, termTime        = ast.StringTerm("cty"), ast.StringTerm("cert"), ast.StringTerm("time")
)

// verify is jwt.rego's valid[token] for one rule: the token's issuer is the
// rule's, io.jwt.decode_verify accepts it with the rule's JWKS and issuer (and
// the token's first audience, see jwt.rego's constraints) at time now, and the
// rule accepts one of its audiences. nil: the rule refuses it.
func (j *nativeJWT) verify(token string, rule *nativeJWTRule, now time.Time) *verifiedToken {
	d := j.cache.decode(token)
	if !d.ok || !issuerIs(d.claims, rule.issuer) || rule.jwks == nil {
		return nil
	}
	v := j.cache.decodeVerify(token, rule, d.claims, now)
	if v == nil || len(rule.audiences) == 0 {
		return v
	}
	for _, a := range v.auth.audiences {
		if slices.Contains(rule.audiences, a) {
			return v
		}
	}
	return nil
}

// audiences is the aud claim as a list (jwt.rego's audiences).
func audiences(claims ast.Object) []*ast.Term {
	t := claims.Get(termAud)
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

// sortedSet sorts s in place and drops repeats.
func sortedSet(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// ---------------------------------------------------------------------------
// The cache of decoded and verified tokens.

// jwtCache keeps, per token, what io.jwt.decode gave and what
// io.jwt.decode_verify decided for each issuer and JWKS, so that a token seen
// before costs lookups, accepted or not. decode_verify's answer depends on the
// time only through the token's nbf and exp, so an answer holds while the clock
// stays on the same side of both (and more than a second from either, where
// float rounding could decide differently); outside that span the built-in
// decides again. A nested token (cty JWT) is verified on its inner claims, which
// decode does not show, so its answers are not kept. It holds at most
// jwtCacheEntries tokens of each kind, and starts over when full.
type jwtCache struct {
	mu       sync.RWMutex
	decoded  map[string]decodedToken
	verified map[verifiedKey]verifiedAnswer
}

const jwtCacheEntries = 10000

type decodedToken struct {
	claims ast.Object
	ok     bool
	nested bool // the header's cty is JWT
}

type verifiedKey struct {
	token        string
	issuer, jwks string
}

// verifiedAnswer is decode_verify's answer (nil: refused) and the span of time,
// in seconds, in which it holds.
type verifiedAnswer struct {
	token    *verifiedToken
	from, to float64
}

// verifiedToken is an accepted token: its issuer and request.auth.*.
type verifiedToken struct {
	issuer string
	auth   nativeAuth

	mu      sync.Mutex
	reasons map[string]any // policy → the reason it reports for the token, made once
}

// reason is the reason RequestAuthentication policy reports when it validates
// the token.
func (v *verifiedToken) reason(policy string) any {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.reasons[policy]
	if !ok {
		r = map[string]any{
			"kind": "RequestAuthentication", "policy": policy, "effect": "allow",
			"principal": v.auth.principal, "detail": v.auth.principal,
		}
		if v.reasons == nil {
			v.reasons = map[string]any{}
		}
		v.reasons[policy] = r
	}
	return r
}

func newJWTCache() *jwtCache {
	return &jwtCache{decoded: map[string]decodedToken{}, verified: map[verifiedKey]verifiedAnswer{}}
}

// accepted is what the decision needs of a token decode_verify accepted with
// claims: jwt.rego's auth, which is undefined when the subject is not a string
// (concat fails).
func accepted(claims ast.Object) *verifiedToken {
	iss, _ := claims.Get(termIss).Value.(ast.String) // the constraint's issuer
	v := &verifiedToken{issuer: string(iss)}
	sub := ast.String("")
	if t := claims.Get(termSub); t != nil {
		s, ok := t.Value.(ast.String)
		if !ok {
			return v
		}
		sub = s
	}
	v.auth = nativeAuth{defined: true, principal: string(iss) + "/" + string(sub), claims: claims}
	if t := claims.Get(termAzp); t != nil {
		if s, ok := t.Value.(ast.String); ok { // another value matches no pattern
			v.auth.presenter = string(s)
		}
	}
	for _, a := range audiences(claims) {
		if s, ok := a.Value.(ast.String); ok {
			v.auth.audiences = append(v.auth.audiences, string(s))
		}
	}
	return v
}

var (
	jwtDecode       = topdown.GetBuiltin(ast.JWTDecode.Name)
	jwtDecodeVerify = topdown.GetBuiltin(ast.JWTDecodeVerify.Name)
)

// decode is what io.jwt.decode(token) gives: its payload (ok is false where it
// fails), and whether it is nested.
func (c *jwtCache) decode(token string) decodedToken {
	c.mu.RLock()
	d, hit := c.decoded[token]
	c.mu.RUnlock()
	if hit {
		return d
	}
	return c.decodeNew(token)
}

func (c *jwtCache) decodeNew(token string) decodedToken {
	var d decodedToken
	_ = jwtDecode(topdown.BuiltinContext{Context: context.Background()}, []*ast.Term{ast.StringTerm(token)}, func(t *ast.Term) error {
		if a, ok := t.Value.(*ast.Array); ok && a.Len() == 3 {
			d.claims, d.ok = a.Elem(1).Value.(ast.Object)
			if h, ok := a.Elem(0).Value.(ast.Object); ok {
				if t := h.Get(termCty); t != nil {
					cty, ok := t.Value.(ast.String)
					d.nested = ok && strings.EqualFold(string(cty), "JWT")
				}
			}
		}
		return nil
	}) // an error: not a JWT, no claims
	c.mu.Lock()
	if len(c.decoded) >= jwtCacheEntries {
		clear(c.decoded)
	}
	c.decoded[token] = d
	c.mu.Unlock()
	return d
}

// decodeVerify is jwt.rego's io.jwt.decode_verify(token, constraints(rule,
// unverified)) at time now: the accepted token, nil when refused.
func (c *jwtCache) decodeVerify(token string, rule *nativeJWTRule, unverified ast.Object, now time.Time) *verifiedToken {
	key := verifiedKey{token, rule.issuer, string(rule.jwks.Value.(ast.String))}
	sec := float64(now.UnixNano()) / 1e9
	c.mu.RLock()
	a, hit := c.verified[key]
	c.mu.RUnlock()
	if hit && a.from <= sec && sec < a.to {
		return a.token
	}
	return c.decodeVerifyNew(key, rule, unverified, now, sec)
}

func (c *jwtCache) decodeVerifyNew(key verifiedKey, rule *nativeJWTRule, unverified ast.Object, now time.Time, sec float64) *verifiedToken {
	token := key.token
	constraints := ast.NewObject(
		ast.Item(termCert, rule.jwks),
		ast.Item(termIss, ast.StringTerm(rule.issuer)),
		ast.Item(termTime, ast.NumberTerm(jsonInt(now.UnixNano()))),
	)
	if aud := audiences(unverified); len(aud) > 0 {
		constraints.Insert(termAud, aud[0])
	}
	var claims ast.Object
	_ = jwtDecodeVerify(topdown.BuiltinContext{Context: context.Background()}, []*ast.Term{ast.StringTerm(token), ast.NewTerm(constraints)}, func(t *ast.Term) error {
		if a, ok := t.Value.(*ast.Array); ok && a.Len() == 3 && a.Elem(0).Value.Compare(ast.Boolean(true)) == 0 {
			claims, _ = a.Elem(2).Value.(ast.Object)
		}
		return nil
	}) // an error (a malformed token, a bad constraint): not accepted
	a := verifiedAnswer{from: math.Inf(-1), to: math.Inf(1)}
	if claims != nil {
		a.token = accepted(claims)
	}
	if !c.decode(token).nested {
		for _, name := range []string{"nbf", "exp"} {
			a.from, a.to = narrow(a.from, a.to, unverified, name, sec)
		}
		c.mu.Lock()
		if len(c.verified) >= jwtCacheEntries {
			clear(c.verified)
		}
		c.verified[key] = a
		c.mu.Unlock()
	}
	return a.token
}

// narrow narrows the span [from, to) around sec to the side of the time claim
// name that sec is on, a second short of it. A claim that is not a number
// leaves no span (decode_verify fails on it, but the span need not be exact).
func narrow(from, to float64, claims ast.Object, name string, sec float64) (float64, float64) {
	t := claims.Get(ast.StringTerm(name))
	if t == nil {
		return from, to
	}
	n, ok := t.Value.(ast.Number)
	if !ok {
		return 0, 0
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsNaN(f) {
		return 0, 0
	}
	if sec < f {
		return from, min(to, f-1)
	}
	return max(from, f+1), to
}

func jsonInt(n int64) json.Number { return json.Number(strconv.FormatInt(n, 10)) }
