package palisade.mesh_test

import data.palisade.mesh
import data.palisade.mesh.jwt_test

# request is a GET from default/sleep (mTLS) to default/reviews.
request := {
	"attributes": {
		"source": {
			"address": {"socketAddress": {"address": "10.1.2.3", "portValue": 40000}},
			"principal": "spiffe://cluster.local/ns/default/sa/sleep",
		},
		"destination": {"address": {"socketAddress": {"address": "10.9.9.9", "portValue": 9080}}},
		"request": {"http": {"method": "GET", "path": "/books", "host": "reviews:9080", "headers": {}}},
	},
	"palisade": {"workload": {"namespace": "default", "labels": {"app": "reviews"}}},
}

# Policy builders, as palisaded writes policies into data.palisade.config.
policy(ns, name, spec) := {"metadata": {"namespace": ns, "name": name}, "spec": spec}

get_only := {"to": [{"operation": {"methods": ["GET"]}}]}

post_only := {"to": [{"operation": {"methods": ["POST"]}}]}

allow(ns, name, rules) := policy(ns, name, {"action": "ALLOW", "rules": rules})

deny(ns, name, rules) := policy(ns, name, {"action": "DENY", "rules": rules})

custom(ns, name, provider, rules) := policy(ns, name, {"action": "CUSTOM", "provider": {"name": provider}, "rules": rules})

audit(ns, name, rules) := policy(ns, name, {"action": "AUDIT", "rules": rules})

rego(ns, name, spec) := policy(ns, name, spec)

# config builds data.palisade.config: root namespace istio-system.
config(aps, rps) := {
	"root_namespace": "istio-system",
	"authorization_policies": group(aps),
	"rego_policies": group(rps),
}

group(policies) := {ns: [p | some p in policies; p.metadata.namespace == ns] | some q in policies; ns := q.metadata.namespace}

# modules stands for the compiled RegoPolicies, data.palisade.regopolicies[NS][NAME].
modules := {
	"default": {
		"yes": {"allow": true},
		"no": {"allow": false},
		"empty": {},
		"headers": {"allow": {"allowed": true, "headers": {"x-user": "alice"}, "response_headers_to_add": {"x-checked": "1"}, "request_headers_to_remove": ["x-secret"]}},
		"teapot": {"allow": {"allowed": false, "http_status": 418, "body": "no tea", "headers": {"x-why": "teapot"}}},
		"named": {"verdict": true, "allow": false},
		"object-without-allowed": {"allow": {"headers": {"a": "b"}}},
	},
	"istio-system": {"ext-allow": {"allow": {"allowed": true, "headers": {"x-ext": "ok"}}}},
}

rbac := "RBAC: access denied"

# Each case: policies (aps: AuthorizationPolicies, rps: RegoPolicies), optionally a
# change to the request, and the fields of the decision it must have.
cases := [
	{
		"name": "no policy: allowed",
		"aps": [], "rps": [],
		"want": {"allowed": true, "http_status": 200, "reason": "allowed: no ALLOW policy applies", "reasons": [], "body": ""},
	},
	{
		"name": "matching ALLOW policy",
		"aps": [allow("default", "get", [post_only, get_only])], "rps": [],
		"want": {
			"allowed": true, "http_status": 200, "reason": "allowed by ALLOW policy default/get",
			"reasons": [{"kind": "AuthorizationPolicy", "policy": "default/get", "action": "ALLOW", "rule": 1, "effect": "allow"}],
		},
	},
	{
		"name": "ALLOW policies apply, none matches",
		"aps": [allow("default", "post", [post_only]), allow("istio-system", "mesh-post", [post_only])], "rps": [],
		"want": {
			"allowed": false, "http_status": 403, "reason": "no ALLOW policy matched", "body": rbac,
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/post", "action": "ALLOW", "effect": "no match"},
				{"kind": "AuthorizationPolicy", "policy": "istio-system/mesh-post", "action": "ALLOW", "effect": "no match"},
			],
		},
	},
	{
		"name": "ALLOW policy without rules denies everything",
		"aps": [policy("default", "allow-nothing", {"action": "ALLOW"})], "rps": [],
		"want": {"allowed": false, "http_status": 403, "reason": "no ALLOW policy matched"},
	},
	{
		"name": "ALLOW policy with rule {} allows everything",
		"aps": [allow("default", "allow-all", [{}])], "rps": [],
		"want": {"allowed": true, "reason": "allowed by ALLOW policy default/allow-all"},
	},
	{
		"name": "DENY policy without rules denies nothing",
		"aps": [policy("default", "deny-nothing", {"action": "DENY"})], "rps": [],
		"want": {"allowed": true, "http_status": 200},
	},
	{
		"name": "DENY beats ALLOW; every matching DENY policy is listed",
		"aps": [
			allow("default", "get", [get_only]), deny("default", "z-get", [post_only, get_only]),
			deny("istio-system", "mesh-get", [get_only]), deny("default", "post", [post_only]),
		],
		"rps": [],
		"want": {
			"allowed": false, "http_status": 403, "body": rbac, "reason": "denied by DENY policy default/z-get",
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/z-get", "action": "DENY", "rule": 1, "effect": "deny"},
				{"kind": "AuthorizationPolicy", "policy": "istio-system/mesh-get", "action": "DENY", "rule": 0, "effect": "deny"},
			],
		},
	},
	{
		"name": "DENY policy not matching",
		"aps": [deny("default", "post", [post_only])], "rps": [],
		"want": {"allowed": true, "reasons": []},
	},
	{
		"name": "mesh-wide DENY in the root namespace",
		"aps": [deny("istio-system", "mesh", [{}])], "rps": [],
		"want": {"allowed": false, "reason": "denied by DENY policy istio-system/mesh"},
	},
	{
		"name": "policies of another namespace do not apply",
		"aps": [deny("prod", "all", [{}]), allow("prod", "none", [])], "rps": [],
		"want": {"allowed": true, "reasons": []},
	},
	{
		"name": "selector of other workloads",
		"aps": [policy("default", "ratings", {"action": "DENY", "selector": {"matchLabels": {"app": "ratings"}}, "rules": [{}]})], "rps": [],
		"want": {"allowed": true},
	},
	{
		"name": "selector of the workload",
		"aps": [policy("default", "reviews", {"action": "DENY", "selector": {"matchLabels": {"app": "reviews"}}, "rules": [{}]})], "rps": [],
		"want": {"allowed": false, "reason": "denied by DENY policy default/reviews"},
	},
	{
		"name": "AUDIT is reported and changes nothing",
		"aps": [audit("default", "audit-get", [get_only]), audit("default", "audit-post", [post_only]), allow("default", "get", [get_only])], "rps": [],
		"want": {
			"allowed": true,
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/audit-get", "action": "AUDIT", "rule": 0, "effect": "audit"},
				{"kind": "AuthorizationPolicy", "policy": "default/get", "action": "ALLOW", "rule": 0, "effect": "allow"},
			],
		},
	},
	{
		"name": "AUDIT is reported with a DENY",
		"aps": [audit("default", "audit-all", [{}]), deny("default", "get", [get_only])], "rps": [],
		"want": {
			"allowed": false,
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/get", "action": "DENY", "rule": 0, "effect": "deny"},
				{"kind": "AuthorizationPolicy", "policy": "default/audit-all", "action": "AUDIT", "rule": 0, "effect": "audit"},
			],
		},
	},
	{
		"name": "every matching ALLOW policy is listed, the first names the reason",
		"aps": [allow("istio-system", "mesh-all", [{}]), allow("default", "get", [get_only]), allow("default", "post", [post_only])], "rps": [],
		"want": {
			"allowed": true, "reason": "allowed by ALLOW policy default/get",
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/get", "action": "ALLOW", "rule": 0, "effect": "allow"},
				{"kind": "AuthorizationPolicy", "policy": "istio-system/mesh-all", "action": "ALLOW", "rule": 0, "effect": "allow"},
			],
		},
	},
	{
		"name": "two CUSTOM providers: the one that denies decides",
		"aps": [custom("default", "a", "ext", [{}]), custom("default", "b", "other", [{}])],
		"rps": [rego("istio-system", "ext-allow", {"provider": "ext"}), rego("default", "teapot", {"provider": "other"})],
		"want": {
			"allowed": false, "http_status": 418,
			"reason": "denied by CUSTOM policy default/b: RegoPolicy default/teapot of provider \"other\" denied",
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/a", "action": "CUSTOM", "provider": "ext", "rule": 0, "effect": "allow", "detail": "provider ext"},
				{"kind": "AuthorizationPolicy", "policy": "default/b", "action": "CUSTOM", "provider": "other", "rule": 0, "effect": "deny", "detail": "provider other"},
				{"kind": "RegoPolicy", "policy": "istio-system/ext-allow", "provider": "ext", "effect": "allow"},
				{"kind": "RegoPolicy", "policy": "default/teapot", "provider": "other", "effect": "deny"},
			],
		},
	},
	{
		"name": "AUDIT alone does not make ALLOW policies apply",
		"aps": [audit("default", "audit-post", [post_only])], "rps": [],
		"want": {"allowed": true},
	},
	{
		"name": "CUSTOM provider allows, its headers reach the request",
		"aps": [custom("default", "ext", "ext", [get_only])],
		"rps": [rego("istio-system", "ext-allow", {"provider": "ext"})],
		"want": {
			"allowed": true, "headers": {"x-ext": "ok"},
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/ext", "action": "CUSTOM", "provider": "ext", "rule": 0, "effect": "allow", "detail": "provider ext"},
				{"kind": "RegoPolicy", "policy": "istio-system/ext-allow", "provider": "ext", "effect": "allow"},
			],
		},
	},
	{
		"name": "CUSTOM provider denies with its status, body and headers, before DENY",
		"aps": [custom("default", "ext", "ext", [get_only]), deny("default", "all", [{}])],
		"rps": [rego("default", "teapot", {"provider": "ext"}), rego("istio-system", "ext-allow", {"provider": "ext"})],
		"want": {
			"allowed": false, "http_status": 418, "body": "no tea", "headers": {"x-why": "teapot"},
			"reason": "denied by CUSTOM policy default/ext: RegoPolicy default/teapot of provider \"ext\" denied",
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/ext", "action": "CUSTOM", "provider": "ext", "rule": 0, "effect": "deny", "detail": "provider ext"},
				{"kind": "RegoPolicy", "policy": "default/teapot", "provider": "ext", "effect": "deny"},
				{"kind": "RegoPolicy", "policy": "istio-system/ext-allow", "provider": "ext", "effect": "allow"},
			],
		},
	},
	{
		"name": "CUSTOM provider's RegoPolicy denies with false",
		"aps": [custom("default", "ext", "ext", [{}])],
		"rps": [rego("default", "no", {"provider": "ext"})],
		"want": {"allowed": false, "http_status": 403, "reason": "denied by CUSTOM policy default/ext: RegoPolicy default/no of provider \"ext\" denied"},
	},
	{
		"name": "CUSTOM provider's decision undefined",
		"aps": [custom("default", "ext", "ext", [{}])],
		"rps": [rego("default", "empty", {"provider": "ext"})],
		"want": {"allowed": false, "http_status": 403},
	},
	{
		"name": "CUSTOM provider without RegoPolicy fails closed",
		"aps": [custom("default", "ext", "missing", [{}])],
		"rps": [rego("istio-system", "ext-allow", {"provider": "ext"})],
		"want": {
			"allowed": false, "http_status": 403,
			"reason": "denied by CUSTOM policy default/ext: no RegoPolicy for provider \"missing\"",
			"reasons": [{"kind": "AuthorizationPolicy", "policy": "default/ext", "action": "CUSTOM", "provider": "missing", "rule": 0, "effect": "deny", "detail": "provider missing"}],
		},
	},
	{
		"name": "CUSTOM provider whose RegoPolicy selects other workloads has none",
		"aps": [custom("default", "ext", "ext", [{}])],
		"rps": [rego("default", "yes", {"provider": "ext", "selector": {"matchLabels": {"app": "ratings"}}})],
		"want": {"allowed": false, "reason": "denied by CUSTOM policy default/ext: no RegoPolicy for provider \"ext\""},
	},
	{
		"name": "CUSTOM policy not matching: the provider is not asked",
		"aps": [custom("default", "ext", "ext", [post_only])],
		"rps": [rego("default", "no", {"provider": "ext"})],
		"want": {"allowed": true, "reasons": []},
	},
	{
		"name": "a provider's RegoPolicy does not decide on its own",
		"aps": [], "rps": [rego("default", "no", {"provider": "ext"})],
		"want": {"allowed": true, "reasons": []},
	},
	{
		"name": "RegoPolicy allows with true",
		"aps": [], "rps": [rego("default", "yes", {})],
		"want": {"allowed": true, "reasons": [{"kind": "RegoPolicy", "policy": "default/yes", "effect": "allow"}]},
	},
	{
		"name": "RegoPolicy denies with false",
		"aps": [allow("default", "all", [{}])], "rps": [rego("default", "yes", {}), rego("default", "no", {})],
		"want": {
			"allowed": false, "http_status": 403, "reason": "denied by RegoPolicy default/no",
			"reasons": [
				{"kind": "AuthorizationPolicy", "policy": "default/all", "action": "ALLOW", "rule": 0, "effect": "allow"},
				{"kind": "RegoPolicy", "policy": "default/no", "effect": "deny"},
				{"kind": "RegoPolicy", "policy": "default/yes", "effect": "allow"},
			],
		},
	},
	{
		"name": "RegoPolicy with an undefined decision denies",
		"aps": [], "rps": [rego("default", "empty", {})],
		"want": {
			"allowed": false, "http_status": 403, "reason": "denied by RegoPolicy default/empty: decision undefined",
			"reasons": [{"kind": "RegoPolicy", "policy": "default/empty", "effect": "deny", "detail": "decision undefined"}],
		},
	},
	{
		"name": "RegoPolicy whose module is missing denies",
		"aps": [], "rps": [rego("default", "not-compiled", {})],
		"want": {"allowed": false, "reason": "denied by RegoPolicy default/not-compiled: decision undefined"},
	},
	{
		"name": "RegoPolicy object without allowed denies",
		"aps": [], "rps": [rego("default", "object-without-allowed", {})],
		"want": {"allowed": false, "http_status": 403, "reason": "denied by RegoPolicy default/object-without-allowed"},
	},
	{
		"name": "RegoPolicy's own status, body and headers",
		"aps": [], "rps": [rego("default", "teapot", {})],
		"want": {"allowed": false, "http_status": 418, "body": "no tea", "headers": {"x-why": "teapot"}},
	},
	{
		"name": "RegoPolicy with another decision rule",
		"aps": [], "rps": [rego("default", "named", {"decision": "verdict"})],
		"want": {"allowed": true},
	},
	{
		"name": "allowed RegoPolicies' headers are merged",
		"aps": [], "rps": [rego("default", "headers", {}), rego("default", "yes", {})],
		"want": {
			"allowed": true, "headers": {"x-user": "alice"}, "response_headers_to_add": {"x-checked": "1"},
			"request_headers_to_remove": ["x-secret"],
		},
	},
	{
		"name": "RegoPolicy selecting other workloads does not decide",
		"aps": [], "rps": [rego("default", "no", {"selector": {"matchLabels": {"app": "ratings"}}})],
		"want": {"allowed": true},
	},
	{
		"name": "ALLOW denial comes before RegoPolicies",
		"aps": [allow("default", "post", [post_only])], "rps": [rego("default", "teapot", {})],
		"want": {"allowed": false, "http_status": 403, "reason": "no ALLOW policy matched"},
	},
	{
		"name": "workload in the root namespace",
		"aps": [deny("istio-system", "get", [get_only])], "rps": [],
		"patch": {"palisade": {"workload": {"namespace": "istio-system"}}},
		"want": {
			"allowed": false,
			"reasons": [{"kind": "AuthorizationPolicy", "policy": "istio-system/get", "action": "DENY", "rule": 0, "effect": "deny"}],
		},
	},
	{
		"name": "every field is present",
		"aps": [], "rps": [],
		"want": {
			"allowed": true, "http_status": 200, "headers": {}, "response_headers_to_add": {},
			"request_headers_to_remove": [], "body": "", "reason": "allowed: no ALLOW policy applies", "reasons": [],
		},
	},
]

test_decision if {
	every c in cases {
		got := mesh.decision with input as object.union(request, object.get(c, "patch", {}))
			with data.palisade.config as config(c.aps, c.rps)
			with data.palisade.regopolicies as modules
		print_mismatch(c, got)
		every k, v in c.want {
			got[k] == v
		}
	}
}

# print_mismatch prints the case that fails (opa test -v shows it).
print_mismatch(c, got) if {
	some k, v in c.want
	got[k] != v
	print("case", c.name, "field", k, "want", v, "got", got[k])
} else := true

# The decision is always a complete object.
fields := {"allowed", "http_status", "headers", "response_headers_to_add", "request_headers_to_remove", "body", "reason", "reasons"}

test_fail_closed if {
	# No workload in the input, no data, or neither: denied.
	d1 := mesh.decision with input as {"attributes": request.attributes} with data.palisade.config as config([], [])
	d1.allowed == false
	d1.http_status == 403
	object.keys(d1) == fields

	d2 := mesh.decision with input as request with data.palisade.config as {}
	d2.allowed == false

	d3 := mesh.decision with input as {}
	d3.allowed == false
	object.keys(d3) == fields
}

test_denials_have_every_field if {
	d := mesh.decision with input as request with data.palisade.config as config([deny("default", "all", [{}])], [])
	object.keys(d) == fields
	d.allowed == false
	d.response_headers_to_add == {}
	d.request_headers_to_remove == []
}

# ---------------------------------------------------------------------------
# With RequestAuthentication: real tokens (from jwt_test).

jwt_config(aps) := object.union(config(aps, []), {"request_authentications": {"istio-system": [policy(
	"istio-system", "issuer",
	{"jwtRules": [jwt_test.rule({"outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]})]},
)]}})

with_token(token) := object.union(request, {"attributes": {"request": {"http": {"headers": {"authorization": concat(" ", ["Bearer", token])}}}}})

require_jwt := allow("default", "require-jwt", [{"from": [{"source": {"requestPrincipals": ["https://issuer.example.com/*"]}}]}])

jwt_cases := [
	{
		"name": "valid token, policy requires one",
		"input": with_token(jwt_test.valid), "aps": [require_jwt],
		"want": {
			"allowed": true, "http_status": 200, "headers": {"x-sub": "alice"}, "request_headers_to_remove": ["authorization"],
			"reasons": [
				{"kind": "RequestAuthentication", "policy": "istio-system/issuer", "effect": "allow", "principal": "https://issuer.example.com/alice", "detail": "https://issuer.example.com/alice"},
				{"kind": "AuthorizationPolicy", "policy": "default/require-jwt", "action": "ALLOW", "rule": 0, "effect": "allow"},
			],
		},
	},
	{
		"name": "no token: not a 401, but the ALLOW policy denies",
		"input": request, "aps": [require_jwt],
		"want": {"allowed": false, "http_status": 403, "reason": "no ALLOW policy matched"},
	},
	{
		"name": "no token and no policy: allowed",
		"input": request, "aps": [],
		"want": {"allowed": true, "reasons": []},
	},
	{
		"name": "expired token: 401 before any AuthorizationPolicy",
		"input": with_token(jwt_test.expired), "aps": [allow("default", "all", [{}]), custom("default", "ext", "missing", [{}])],
		"want": {
			"allowed": false, "http_status": 401, "reason": "Jwt verification fails", "body": "Jwt verification fails",
			"headers": {"www-authenticate": "Bearer realm=\"http://reviews:9080/books\", error=\"invalid_token\""},
			"reasons": [{"kind": "RequestAuthentication", "policy": "istio-system/issuer", "effect": "deny", "detail": "Jwt verification fails", "issuer": "https://issuer.example.com"}],
		},
	},
	{
		"name": "token of an unknown issuer",
		"input": with_token(jwt_test.unknown_issuer), "aps": [],
		"want": {"allowed": false, "http_status": 401, "reason": "Jwt issuer is not configured"},
	},
	{
		"name": "claims in when",
		"input": with_token(jwt_test.valid),
		"aps": [deny("default", "no-ops", [{"when": [{"key": "request.auth.claims[groups]", "values": ["ops"]}]}])],
		"want": {"allowed": false, "http_status": 403, "reason": "denied by DENY policy default/no-ops"},
	},
]

test_decision_with_jwt if {
	every c in jwt_cases {
		got := mesh.decision with input as c.input with data.palisade.config as jwt_config(c.aps)
			with data.palisade.regopolicies as modules
		print_mismatch(c, got)
		every k, v in c.want {
			got[k] == v
		}
	}
}
