package palisade.mesh.jwt_test

import data.palisade.mesh.jwt

# Two EC P-256 keys written for these tests: k1 signs the issuer's tokens, k2 is
# someone else's key.
k1 := {
	"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
	"x": "1-SwNxa0Ov4DVkTCljwoUAw7Sykj61yWEqzMxeDi1AU",
	"y": "Wcn4oLOMhELOfWjn1fCUoohuwGdHhdN8d5e53QXGQsc",
	"d": "6TOIlyIqqU4SZO3QQUGOpBSUm8fBwIxw-ZbFg7jmG2Y",
}

k2 := {
	"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
	"x": "FQ_PazWuyes3tsC-jloXWTWOxq1migmMWhl9eCR9lJM",
	"y": "aKhGj0EpivWcQxRYJy1p4WWIopts4gfxMxRCMbzCI7k",
	"d": "0KyKnKazAGDnltgdkm6B6XJUKs47-IA4P9P-LezdNGg",
}

# jwks is the issuer's public JWKS, as palisaded puts it in jwtRules[].jwks.
jwks := json.marshal({"keys": [object.remove(k1, ["d"])]})

issuer := "https://issuer.example.com"

# sign(claims, key) is a token with the claims, signed with key.
sign(claims, key) := io.jwt.encode_sign({"alg": "ES256", "kid": "k1", "typ": "JWT"}, claims, key)

# claims(extra) are valid claims (expiring in 2100) with extra ones merged in.
claims(extra) := object.union({"iss": issuer, "sub": "alice", "exp": 4102444800}, extra)

valid := sign(claims({"aud": ["bookinfo", "other"], "azp": "web", "groups": ["dev", "ops"]}), k1)

expired := sign(claims({"exp": 1000000000}), k1)

not_yet_valid := sign(claims({"nbf": 4102444000}), k1)

wrong_signature := sign(claims({}), k2)

unknown_issuer := sign(object.union(claims({}), {"iss": "https://evil.example.com"}), k1)

# rule is a jwtRule of the issuer with extra fields.
rule(extra) := object.union({"issuer": issuer, "jwks": jwks}, extra)

# request builds the input for a workload in default with the given HTTP headers
# and query parameters.
request(headers, query) := {
	"attributes": {"request": {"http": {"method": "GET", "path": "/", "headers": headers}}},
	"parsed_query": query,
	"palisade": {"workload": {"namespace": "default", "labels": {"app": "reviews"}}},
}

# config has one RequestAuthentication, default/jwt, with the given rules.
config(rules) := {
	"root_namespace": "istio-system",
	"request_authentications": {"default": [{
		"metadata": {"namespace": "default", "name": "jwt"},
		"spec": {"jwtRules": rules},
	}]},
}

bearer(token) := {"authorization": concat(" ", ["Bearer", token])}

# Each case says whether the request is denied, and with which reason, or which
# request.auth.principal it gets ("" for none).
cases := [
	{
		"name": "valid token in the Authorization header",
		"rules": [rule({})], "headers": bearer(valid), "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "no token: not denied, no request.auth",
		"rules": [rule({})], "headers": {}, "query": {},
		"want": {"denied": false, "principal": ""},
	},
	{
		"name": "Authorization without the Bearer prefix holds no token",
		"rules": [rule({})], "headers": {"authorization": concat(" ", ["Basic", valid])}, "query": {},
		"want": {"denied": false, "principal": ""},
	},
	{
		"name": "expired token",
		"rules": [rule({})], "headers": bearer(expired), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "token not yet valid",
		"rules": [rule({})], "headers": bearer(not_yet_valid), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "token signed with another key",
		"rules": [rule({})], "headers": bearer(wrong_signature), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "token of an issuer no rule has",
		"rules": [rule({})], "headers": bearer(unknown_issuer), "query": {},
		"want": {"denied": true, "reason": "Jwt issuer is not configured"},
	},
	{
		"name": "not a JWT",
		"rules": [rule({})], "headers": bearer("not.a-jwt"), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "rule without jwks (jwksUri fetch failed) rejects its tokens",
		"rules": [{"issuer": issuer}], "headers": bearer(valid), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "audience listed by the rule",
		"rules": [rule({"audiences": ["x", "other"]})], "headers": bearer(valid), "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "audience not listed by the rule",
		"rules": [rule({"audiences": ["x"]})], "headers": bearer(valid), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "rule with audiences, token without aud",
		"rules": [rule({"audiences": ["x"]})], "headers": bearer(sign(claims({}), k1)), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "rule without audiences accepts a token without aud",
		"rules": [rule({})], "headers": bearer(sign(claims({}), k1)), "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "string aud",
		"rules": [rule({"audiences": ["bookinfo"]})], "headers": bearer(sign(claims({"aud": "bookinfo"}), k1)), "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "custom header with prefix",
		"rules": [rule({"fromHeaders": [{"name": "X-Jwt-Assertion", "prefix": "Token "}]})],
		"headers": {"x-jwt-assertion": concat(" ", ["Token", valid])}, "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "custom header: the default Authorization header is not read",
		"rules": [rule({"fromHeaders": [{"name": "x-jwt"}]})], "headers": bearer(expired), "query": {},
		"want": {"denied": false, "principal": ""},
	},
	{
		"name": "custom header without prefix, invalid token",
		"rules": [rule({"fromHeaders": [{"name": "x-jwt"}]})], "headers": {"x-jwt": expired}, "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "default query parameter access_token",
		"rules": [rule({})], "headers": {}, "query": {"access_token": [valid]},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "default query parameter, invalid token",
		"rules": [rule({})], "headers": {}, "query": {"access_token": [wrong_signature]},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "custom query parameter",
		"rules": [rule({"fromParams": ["jwt"]})], "headers": {}, "query": {"jwt": [valid], "access_token": [expired]},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "cookie",
		"rules": [rule({"fromCookies": ["session"]})], "headers": {"cookie": concat("", ["a=b; session=", valid, "; c=d"])}, "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "cookie, invalid token",
		"rules": [rule({"fromCookies": ["session"]})], "headers": {"cookie": concat("", ["session=", expired])}, "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "a second rule of another issuer does not validate the token",
		"rules": [rule({"issuer": "https://other.example.com"}), rule({"jwks": json.marshal({"keys": [object.remove(k2, ["d"])]})})],
		"headers": bearer(valid), "query": {},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "the rule of the token's issuer among several",
		"rules": [rule({"issuer": "https://other.example.com"}), rule({})],
		"headers": bearer(valid), "query": {},
		"want": {"denied": false, "principal": "https://issuer.example.com/alice"},
	},
	{
		"name": "token where only another issuer's rule looks is of an unconfigured issuer",
		"rules": [rule({"issuer": "https://other.example.com"}), rule({"fromHeaders": [{"name": "x-jwt"}]})],
		"headers": bearer(valid), "query": {},
		"want": {"denied": true, "reason": "Jwt issuer is not configured"},
	},
	{
		"name": "one invalid token among valid ones denies",
		"rules": [rule({})], "headers": bearer(valid), "query": {"access_token": [expired]},
		"want": {"denied": true, "reason": "Jwt verification fails"},
	},
	{
		"name": "no RequestAuthentication: tokens are not looked at",
		"rules": [], "headers": bearer(expired), "query": {},
		"want": {"denied": false, "principal": ""},
	},
]

# outcome is what the policy says about the request, in the shape of the case's want.
outcome := {"denied": true, "reason": jwt.reason} if {
	jwt.denied
} else := {"denied": false, "principal": principal}

default principal := ""

principal := jwt.auth.principal

test_cases if {
	every c in cases {
		got := outcome with input as request(c.headers, c.query) with data.palisade.config as config(c.rules)
		print_mismatch(c, got)
		got == c.want
	}
}

# print_mismatch prints the case that fails (opa test -v shows it).
print_mismatch(c, got) if {
	got != c.want
	print("case", c.name, "want", c.want, "got", got)
} else := true

test_request_auth if {
	got := jwt.auth with input as request(bearer(valid), {}) with data.palisade.config as config([rule({})])
	got.principal == "https://issuer.example.com/alice"
	got.audiences == ["bookinfo", "other"]
	got.presenter == "web"
	got.claims.groups == ["dev", "ops"]
}

test_request_auth_defaults if {
	got := jwt.auth with input as request(bearer(sign({"iss": issuer, "aud": "a"}, k1)), {})
		with data.palisade.config as config([rule({})])
	got == {"principal": "https://issuer.example.com/", "audiences": ["a"], "presenter": "", "claims": {"iss": issuer, "aud": "a"}}
}

test_no_token_no_auth if {
	not jwt.auth with input as request({}, {}) with data.palisade.config as config([rule({})])
	not jwt.denied with input as request({}, {}) with data.palisade.config as config([rule({})])
}

test_expiry_follows_the_clock if {
	# The token expires in 2100: valid now, expired once the clock passes it.
	jwt.auth with input as request(bearer(valid), {}) with data.palisade.config as config([rule({})])
	jwt.denied with input as request(bearer(valid), {}) with data.palisade.config as config([rule({})])
		with time.now_ns as 4102444801000000000
}

test_reasons if {
	inp := request(bearer(valid), {})
	jwt.reasons == [{"kind": "RequestAuthentication", "policy": "default/jwt", "effect": "allow", "principal": "https://issuer.example.com/alice", "detail": "https://issuer.example.com/alice"}] with input as inp
		with data.palisade.config as config([rule({})])
	jwt.reasons == [{"kind": "RequestAuthentication", "policy": "default/jwt", "effect": "deny", "detail": "Jwt verification fails", "issuer": issuer}] with input as request(bearer(expired), {})
		with data.palisade.config as config([rule({})])
	jwt.reasons == [{"kind": "RequestAuthentication", "policy": "default/jwt", "effect": "deny", "detail": "Jwt issuer is not configured", "issuer": "https://evil.example.com"}] with input as request(bearer(unknown_issuer), {})
		with data.palisade.config as config([rule({})])
	jwt.reasons == [] with input as request({}, {}) with data.palisade.config as config([rule({})])
}

test_token_header_removed_unless_forwarded if {
	jwt.request_headers_to_remove == {"authorization"} with input as request(bearer(valid), {})
		with data.palisade.config as config([rule({})])
	count(jwt.request_headers_to_remove) == 0 with input as request(bearer(valid), {})
		with data.palisade.config as config([rule({"forwardOriginalToken": true})])
	count(jwt.request_headers_to_remove) == 0 with input as request({}, {"access_token": [valid]})
		with data.palisade.config as config([rule({})])
}

test_output_headers if {
	got := jwt.request_headers with input as request(bearer(valid), {})
		with data.palisade.config as config([rule({
			"outputPayloadToHeader": "x-jwt-payload",
			"outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-exp", "claim": "exp"}],
		})])
	got["x-sub"] == "alice"
	got["x-exp"] == "4102444800"
	base64url.decode(got["x-jwt-payload"]) == json.marshal(claims({"aud": ["bookinfo", "other"], "azp": "web", "groups": ["dev", "ops"]}))
}
