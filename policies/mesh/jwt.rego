# RequestAuthentication: finding JWTs in the request, validating them, and the
# request.auth.* attributes of a valid one, with Istio's semantics:
#
#   - a request without token passes (no request.auth; an AuthorizationPolicy
#     decides whether that is acceptable, e.g. with requestPrincipals: ["*"]);
#   - a token that is present must be valid under a jwtRule of its issuer
#     (signature against the rule's jwks, exp/nbf, audiences), else the request is
#     denied with 401, as Envoy's jwt_authn filter does.
package palisade.mesh.jwt

import data.palisade.mesh.selection

# rules[[ID, I]] is jwtRules[I] of the applicable RequestAuthentication ID.
rules[[selection.id(p), i]] := r if {
	some p in selection.request_authentications
	some i, r in p.spec.jwtRules
}

default headers := {}

headers := input.attributes.request.http.headers

# ---------------------------------------------------------------------------
# Extraction. extracted contains [TOKEN, KEY, WHERE]: a token found where rule KEY
# looks for one. WHERE is {"header": NAME}, {"param": NAME} or {"cookie": NAME}.

extracted contains [token, key, {"header": name}] if {
	some key, r in rules
	some h in r.fromHeaders
	name := lower(h.name)
	token := header_token(name, object.get(h, "prefix", ""))
}

extracted contains [token, key, {"param": name}] if {
	some key, r in rules
	some name in r.fromParams
	some token in param_tokens(name)
}

extracted contains [token, key, {"cookie": name}] if {
	some key, r in rules
	some name in r.fromCookies
	some token in cookie_tokens(name)
}

# A rule that names no location reads Istio's defaults: the Authorization header
# with the "Bearer " prefix, and the access_token query parameter.
extracted contains [token, key, {"header": "authorization"}] if {
	some key, r in rules
	not custom_locations(r)
	token := header_token("authorization", "Bearer ")
}

extracted contains [token, key, {"param": "access_token"}] if {
	some key, r in rules
	not custom_locations(r)
	some token in param_tokens("access_token")
}

custom_locations(r) if count(r.fromHeaders) > 0

custom_locations(r) if count(r.fromParams) > 0

custom_locations(r) if count(r.fromCookies) > 0

# header_token is the token in header name after prefix; a header without the
# prefix holds no token (as in Envoy: the request counts as without token).
header_token(name, prefix) := token if {
	value := headers[name]
	startswith(value, prefix)
	token := trim_space(substring(value, count(prefix), -1))
	token != ""
}

# param_tokens(name) are the values of query parameter name (each one a token).
param_tokens(name) := {t | some t in input.parsed_query[name]; t != ""}

# cookie_tokens(name) are the values of the cookies called name in the Cookie
# header.
cookie_tokens(name) := {t |
	some pair in split(headers.cookie, ";")
	[k, t] := split(trim_space(pair), "=")
	k == name
	t != ""
}

# found are the distinct tokens of the request (a set: a token read by several
# rules is decoded once).
found contains token if some [token, _, _] in extracted

# claims_of[TOKEN] are the token's claims, not verified yet: only to find its
# issuer. A token that is not a JWT has none (and so is invalid).
claims_of[token] := claims if {
	some token in found
	[_, claims, _] := io.jwt.decode(token)
}

# ---------------------------------------------------------------------------
# Validation.

# valid[TOKEN] are the verified claims of each token that a rule of its issuer,
# reading the place the token was found in, accepts. Normally one rule has the
# issuer, so decode_verify runs once per token.
valid[token] := claims if {
	some [token, key, _] in extracted
	rule := rules[key]
	rule.issuer == claims_of[token].iss
	claims := verify(token, rule)
}

# verify(token, rule) are the token's claims when its signature verifies against
# the rule's jwks (absent when palisaded could not fetch jwksUri: then nothing
# verifies, as in Istio), it is not expired or not yet valid, and the rule accepts
# its audience.
verify(token, rule) := claims if {
	[ok, _, claims] := io.jwt.decode_verify(token, constraints(rule, claims_of[token]))
	ok
	audience_allowed(rule, claims)
}

# constraints for io.jwt.decode_verify. decode_verify rejects a token with an aud
# claim unless given an "aud" that the token has; Istio accepts any audience when
# the rule lists none, so pass one of the token's own audiences and check the
# rule's audiences in audience_allowed instead.
constraints(rule, claims) := {"cert": rule.jwks, "iss": rule.issuer, "time": time.now_ns(), "aud": aud} if {
	aud := audiences(claims)[0]
} else := {"cert": rule.jwks, "iss": rule.issuer, "time": time.now_ns()}

# audience_allowed: a rule without audiences accepts any; otherwise the token
# must have one of them.
audience_allowed(rule, _) if count(object.get(rule, "audiences", [])) == 0

audience_allowed(rule, claims) if {
	some aud in audiences(claims)
	aud in rule.audiences
}

# audiences(claims) is the aud claim as a list (it may be a string or a list).
audiences(claims) := [claims.aud] if {
	is_string(claims.aud)
} else := claims.aud if {
	is_array(claims.aud)
} else := []

# invalid are the tokens no rule validates. One is enough to deny the request.
invalid contains token if {
	some token in found
	not valid[token]
}

denied if {
	configured
	count(invalid) > 0
}

# configured: a RequestAuthentication applies. Without one (the common case),
# tokens are not looked for, and nothing else here is evaluated.
configured if count(selection.request_authentications) > 0

# ---------------------------------------------------------------------------
# request.auth.* of the valid token (the first in sort order if there are
# several). Undefined when the request has no valid token.

auth := {
	"principal": concat("/", [claims.iss, object.get(claims, "sub", "")]),
	"audiences": audiences(claims),
	"presenter": object.get(claims, "azp", ""),
	"claims": claims,
} if {
	configured
	claims := valid[auth_token]
}

# auth_token is the token request.auth is about.
auth_token := sort(object.keys(valid))[0]

# ---------------------------------------------------------------------------
# What the decision reports and does.

# reason says why the request is denied, in Envoy's words.
reason := "Jwt verification fails" if {
	denied
	issuer_configured(failed_token)
} else := "Jwt issuer is not configured" if {
	denied
	claims_of[failed_token]
} else := "Jwt verification fails" if denied

# www_authenticate is the header Envoy's jwt_authn filter sends with its 401.
www_authenticate := concat("", [
	"Bearer realm=\"",
	object.get(http, "scheme", "http"), "://", object.get(http, "host", ""),
	split(object.get(http, "path", "/"), "?")[0],
	"\", error=\"invalid_token\"",
])

default http := {}

http := input.attributes.request.http

# failed_token is the invalid token the denial is about.
failed_token := sort(invalid)[0]

# issuer_configured(token): a rule reading where the token was found has its
# issuer (so the token failed verification, rather than having an unknown issuer).
issuer_configured(token) if {
	some [t, key, _] in extracted
	t == token
	rules[key].issuer == claims_of[token].iss
}

# failed_policies are the RequestAuthentications a denial is about: those with a
# rule of the failed token's issuer or, when none has it, all that apply.
failed_policies contains id if {
	some [t, [id, i], _] in extracted
	t == failed_token
	rules[[id, i]].issuer == claims_of[t].iss
}

failed_policies contains id if {
	denied
	not issuer_configured(failed_token)
	some p in selection.request_authentications
	id := selection.id(p)
}

# validating_policies are the RequestAuthentications with a rule that accepts the
# token of request.auth.
validating_policies contains id if {
	some [t, [id, i], _] in extracted
	t == auth_token
	rules[[id, i]].issuer == auth.claims.iss
}

# reasons lists the RequestAuthentications that took part, sorted by policy;
# "detail" is what palisadectl authz explain shows: why the token failed, or the
# principal of the valid one.
default reasons := []

reasons := [r |
	some id in sort(failed_policies)
	r := {
		"kind": "RequestAuthentication", "policy": id, "effect": "deny", "detail": reason,
		"issuer": object.get(claims_of, [failed_token, "iss"], ""),
	}
] if {
	count(found) > 0
	denied
} else := [r |
	some id in sort(validating_policies)
	r := {"kind": "RequestAuthentication", "policy": id, "effect": "allow", "principal": auth.principal, "detail": auth.principal}
] if {
	count(found) > 0
	auth
}

# request_headers_to_remove: the headers a valid token came in, unless its rule
# says forwardOriginalToken (Envoy removes a verified token from the request by
# default).
request_headers_to_remove contains name if {
	configured
	some [t, key, {"header": name}] in extracted
	valid[t]
	not rules[key].forwardOriginalToken
}

# request_headers are added to the upstream request, for the token of
# request.auth: outputPayloadToHeader gets the token's payload (base64url, as in
# the token), outputClaimToHeaders the claims' values (top-level claims).
request_headers[name] := split(t, ".")[1] if {
	configured
	some [t, key, _] in extracted
	t == auth_token
	name := rules[key].outputPayloadToHeader
}

request_headers[h.header] := value if {
	configured
	some [t, key, _] in extracted
	t == auth_token
	some h in rules[key].outputClaimToHeaders
	value := claim_string(valid[t][h.claim])
}

claim_string(v) := v if is_string(v)

claim_string(v) := sprintf("%v", [v]) if {
	not is_string(v)
	not is_object(v)
	not is_array(v)
}
