# The decision for one request to a workload, in Istio's order:
#
#   1. RequestAuthentication: an invalid JWT denies (401);
#   2. CUSTOM: a matching CUSTOM policy asks its provider (the RegoPolicies with
#      that spec.provider); a provider without RegoPolicy, or one that denies,
#      denies;
#   3. DENY: a matching DENY policy denies (403);
#   4. ALLOW: when ALLOW policies apply, a request none of them matches is denied;
#   5. every RegoPolicy without provider that selects the workload must allow.
#
# AUDIT policies are reported in reasons and never change the decision. Each step
# runs only when the ones before it allowed, so a denial does not pay for the
# later steps. decision is always defined: without input or data to decide on, it
# denies (fail closed).
package palisade.mesh

import data.palisade.mesh.authz
import data.palisade.mesh.jwt
import data.palisade.mesh.selection

default decision := {
	"allowed": false,
	"http_status": 403,
	"headers": {},
	"response_headers_to_add": {},
	"request_headers_to_remove": [],
	"body": "RBAC: access denied",
	"reason": "denied: no decision (input.palisade.workload or data.palisade.config missing)",
	"reasons": [],
}

decision := denial(401, {"www-authenticate": jwt.www_authenticate}, jwt.reason, jwt.reason, jwt.reasons) if {
	jwt.denied
} else := denial(
	object.get(custom_denial.verdict, "http_status", 403),
	object.get(custom_denial.verdict, "headers", {}),
	object.get(custom_denial.verdict, "body", ""),
	custom_denial.reason,
	array.concat(jwt.reasons, array.concat(custom_reasons, audit_reasons)),
) if {
	custom_denial
} else := denial(
	403, {}, "RBAC: access denied",
	concat("", ["denied by DENY policy ", sort(object.keys(authz.deny_matches))[0]]),
	array.concat(jwt.reasons, array.concat(custom_reasons, array.concat(deny_reasons, audit_reasons))),
) if {
	count(authz.deny_matches) > 0
} else := denial(
	403, {}, "RBAC: access denied", "no ALLOW policy matched",
	array.concat(jwt.reasons, array.concat(custom_reasons, array.concat(audit_reasons, allow_reasons))),
) if {
	authz.allow_applies
	count(authz.allow_matches) == 0
} else := denial(
	object.get(rego_denial.verdict, "http_status", 403),
	object.get(rego_denial.verdict, "headers", {}),
	object.get(rego_denial.verdict, "body", ""),
	rego_denial.reason,
	array.concat(jwt.reasons, array.concat(custom_reasons, array.concat(audit_reasons, array.concat(allow_reasons, rego_reasons)))),
) if {
	rego_denial
} else := allowed if {
	# Deciding needs to know the workload and to have the policies; without them,
	# fall back to the default (deny) rather than allow for lack of policies.
	is_string(selection.namespace)
	is_string(selection.root)
}

# denial is a denied decision's object.
denial(status, headers, body, reason, reasons) := {
	"allowed": false,
	"http_status": status,
	"headers": headers,
	"response_headers_to_add": {},
	"request_headers_to_remove": [],
	"body": body,
	"reason": reason,
	"reasons": reasons,
}

# allowed is the decision once every step allowed: the headers that JWT outputs,
# CUSTOM providers and RegoPolicies add or remove are merged (in order: later
# ones win).
allowed := {
	"allowed": true,
	"http_status": 200,
	"headers": added.headers,
	"response_headers_to_add": added.response_headers_to_add,
	"request_headers_to_remove": added.request_headers_to_remove,
	"body": "",
	"reason": allowed_reason,
	"reasons": array.concat(jwt.reasons, array.concat(custom_reasons, array.concat(audit_reasons, array.concat(allow_reasons, rego_reasons)))),
}

# added are the header changes of an allowed request: none without a valid JWT
# or RegoPolicy verdicts (the common case, decided without looking further).
added := {"headers": {}, "response_headers_to_add": {}, "request_headers_to_remove": []} if {
	not jwt.auth
	count(allowing_verdicts) == 0
} else := {
	"headers": object.union_n(array.concat([jwt.request_headers], [object.get(v, "headers", {}) | some v in allowing_verdicts])),
	"response_headers_to_add": object.union_n([object.get(v, "response_headers_to_add", {}) | some v in allowing_verdicts]),
	"request_headers_to_remove": sort(jwt.request_headers_to_remove | {h | some v in allowing_verdicts; some h in object.get(v, "request_headers_to_remove", [])}),
}

allowed_reason := concat("", ["allowed by ALLOW policy ", sort(object.keys(authz.allow_matches))[0]]) if {
	count(authz.allow_matches) > 0
} else := "allowed: no ALLOW policy applies"

# allowing_verdicts are the verdicts of the RegoPolicies consulted, in the order
# of reasons (all allowed, or the request would have been denied).
allowing_verdicts := [] if {
	count(providers) == 0
	count(rego_verdicts) == 0
} else := array.concat(
	[provider_verdicts[name][id] | some name in sort(providers); some id in sort(object.keys(object.get(provider_verdicts, name, {})))],
	[rego_verdicts[id] | some id in sort(object.keys(rego_verdicts))],
)

# ---------------------------------------------------------------------------
# RegoPolicies: a module's decision rule, read as OPA-Envoy reads it.

# verdict(p) is RegoPolicy p's decision as an object: true is {"allowed": true},
# an object is itself (it allows only with "allowed": true), and anything else
# (false, another value, an undefined rule, a missing module) denies.
verdict(p) := v if {
	v := as_verdict(data.palisade.regopolicies[p.metadata.namespace][p.metadata.name][decision_rule(p)])
} else := {"allowed": false, "undefined": true}

decision_rule(p) := r if {
	r := p.spec.decision
	r != ""
} else := "allow"

as_verdict(true) := {"allowed": true}

as_verdict(r) := r if is_object(r)

as_verdict(r) := {"allowed": false} if {
	r != true
	not is_object(r)
}

allows(v) if v.allowed == true

# verdict_detail adds "detail" to the reason of a RegoPolicy whose decision is
# undefined.
verdict_detail(v) := {"detail": "decision undefined"} if {
	v.undefined
} else := {}

effect(v) := "allow" if allows(v)

effect(v) := "deny" if not allows(v)

# has_provider(p): p is a CUSTOM provider's RegoPolicy, not consulted on its own.
has_provider(p) if p.spec.provider != ""

# ---------------------------------------------------------------------------
# Step 2: CUSTOM.

# providers are the providers that the matching CUSTOM policies name.
providers contains m.provider if some m in authz.custom_matches

# provider_verdicts[PROVIDER]["NS/NAME"] is the verdict of each RegoPolicy of a
# provider that is asked (only those: a provider no policy asks costs nothing).
provider_verdicts[name][selection.id(p)] := verdict(p) if {
	some p in selection.rego_policies
	name := p.spec.provider
	name in providers
}

# provider_denial[PROVIDER] says why a provider denies: it has no RegoPolicy, or
# (the first of) its RegoPolicies denies.
provider_denial[name] := {"policy": "", "verdict": {}} if {
	some name in providers
	not provider_verdicts[name]
}

provider_denial[name] := {"policy": id, "verdict": provider_verdicts[name][id]} if {
	some name, verdicts in provider_verdicts
	id := [x | some x in sort(object.keys(verdicts)); not allows(verdicts[x])][0]
}

# custom_denial is the denial of the first matching CUSTOM policy whose provider
# denies.
custom_denial := {"verdict": d.verdict, "reason": custom_denial_reason(id, name, d.policy)} if {
	id := [x | some x in sort(object.keys(authz.custom_matches)); provider_denial[authz.custom_matches[x].provider]][0]
	name := authz.custom_matches[id].provider
	d := provider_denial[name]
}

custom_denial_reason(id, name, "") := concat("", ["denied by CUSTOM policy ", id, ": no RegoPolicy for provider \"", name, "\""])

custom_denial_reason(id, name, rp) := concat("", ["denied by CUSTOM policy ", id, ": RegoPolicy ", rp, " of provider \"", name, "\" denied"]) if rp != ""

# custom_reasons: the matching CUSTOM policies, then their providers' RegoPolicies.
custom_reasons := [] if {
	count(authz.custom_matches) == 0
} else := array.concat(
	[r |
		some id in sort(object.keys(authz.custom_matches))
		m := authz.custom_matches[id]
		r := {
			"kind": "AuthorizationPolicy", "policy": id, "action": "CUSTOM", "provider": m.provider,
			"rule": m.rule, "effect": custom_effect(m.provider), "detail": concat("", ["provider ", m.provider]),
		}
	],
	[r |
		some name in sort(providers)
		some id in sort(object.keys(object.get(provider_verdicts, name, {})))
		r := object.union(
			{"kind": "RegoPolicy", "policy": id, "provider": name, "effect": effect(provider_verdicts[name][id])},
			verdict_detail(provider_verdicts[name][id]),
		)
	],
)

custom_effect(name) := "deny" if {
	provider_denial[name]
} else := "allow"

# ---------------------------------------------------------------------------
# Steps 3 and 4: DENY and ALLOW (the matching is in authz.rego), and AUDIT.

deny_reasons := action_reasons(authz.deny_matches, "DENY", "deny")

audit_reasons := action_reasons(authz.audit_matches, "AUDIT", "audit")

# allow_reasons: the ALLOW policies that matched or, when none did, all the ALLOW
# policies that applied (none matched).
allow_reasons := action_reasons(authz.allow_matches, "ALLOW", "allow") if {
	count(authz.allow_matches) > 0
} else := [r |
	some id in sort(authz.allow_policies)
	r := {"kind": "AuthorizationPolicy", "policy": id, "action": "ALLOW", "effect": "no match"}
]

action_reasons(matches, action, effect) := [r |
	some id in sort(object.keys(matches))
	r := {"kind": "AuthorizationPolicy", "policy": id, "action": action, "rule": matches[id], "effect": effect}
]

# ---------------------------------------------------------------------------
# Step 5: RegoPolicies without provider.

rego_verdicts[selection.id(p)] := verdict(p) if {
	some p in selection.rego_policies
	not has_provider(p)
}

rego_reasons := [] if {
	count(rego_verdicts) == 0
} else := [r |
	some id in sort(object.keys(rego_verdicts))
	r := object.union({"kind": "RegoPolicy", "policy": id, "effect": effect(rego_verdicts[id])}, verdict_detail(rego_verdicts[id]))
]

# rego_denial is the first RegoPolicy (in sort order) that denies.
rego_denial := {"verdict": rego_verdicts[id], "reason": rego_denial_reason(id, rego_verdicts[id])} if {
	id := [x | some x in sort(object.keys(rego_verdicts)); not allows(rego_verdicts[x])][0]
}

rego_denial_reason(id, v) := concat("", ["denied by RegoPolicy ", id, ": decision undefined"]) if {
	v.undefined
} else := concat("", ["denied by RegoPolicy ", id])
