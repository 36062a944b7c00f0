# AuthorizationPolicy: which applicable policies the request matches, and with
# which rule. The decision (decision.rego) applies Istio's order to the results:
# CUSTOM, then DENY, then ALLOW; AUDIT never changes it.
#
# A policy matches when one of its rules does; a policy without rules matches
# nothing (so an ALLOW policy without rules denies everything, a DENY policy
# without rules denies nothing), and the rule {} matches every request. A rule
# matches when its from, to and when all do.
package palisade.mesh.authz

import data.palisade.mesh.jwt
import data.palisade.mesh.match
import data.palisade.mesh.selection

# deny_matches, audit_matches and allow_matches map "NS/NAME" of each applicable
# policy of the action that the request matches to the index of its first
# matching rule; custom_matches to {"rule": INDEX, "provider": NAME} ("" when the
# policy names no provider). Separate rules, so that a decision made by CUSTOM or
# DENY never evaluates the ALLOW policies. palisaded always writes spec.action;
# ALLOW, Istio's default, is assumed without it all the same.
custom_matches[selection.id(p)] := {"rule": i, "provider": object.get(p.spec, ["provider", "name"], "")} if {
	some p in selection.authorization_policies
	p.spec.action == "CUSTOM"
	i := first_match(p)
}

deny_matches[selection.id(p)] := i if {
	some p in selection.authorization_policies
	p.spec.action == "DENY"
	i := first_match(p)
}

audit_matches[selection.id(p)] := i if {
	some p in selection.authorization_policies
	p.spec.action == "AUDIT"
	i := first_match(p)
}

allow_matches[selection.id(p)] := i if {
	some p in selection.authorization_policies
	object.get(p.spec, "action", "ALLOW") == "ALLOW"
	i := first_match(p)
}

# allow_applies: an ALLOW policy applies, so a request none of them matches is
# denied.
allow_applies if {
	some p in selection.authorization_policies
	object.get(p.spec, "action", "ALLOW") == "ALLOW"
}

# allow_policies are "NS/NAME" of the applicable ALLOW policies (for reasons).
allow_policies contains selection.id(p) if {
	some p in selection.authorization_policies
	object.get(p.spec, "action", "ALLOW") == "ALLOW"
}

# first_match(p) is the index of the first rule of p that the request matches;
# undefined when none does (or p has no rules).
first_match(p) := [i | some i, rule in p.spec.rules; rule_matches(rule)][0]

# rule_matches(rule): from, to and when all match. Absent or empty from/to
# match every request, as Istio reads them; from and to match when one of their
# entries does; every condition of when must match.
rule_matches(rule) if {
	from_matches(object.get(rule, "from", []))
	to_matches(object.get(rule, "to", []))
	every c in object.get(rule, "when", []) {
		condition_matches(c)
	}
}

from_matches([]) := true

from_matches(from) if {
	some f in from
	every field, patterns in object.get(f, "source", {}) {
		source_field(field, patterns)
	}
}

to_matches([]) := true

to_matches(to) if {
	some t in to
	every field, patterns in object.get(t, "operation", {}) {
		operation_field(field, patterns)
	}
}

# ---------------------------------------------------------------------------
# Sources and operations: every field present must match (an unknown field never
# does; validation rejects it anyway). An empty list is no constraint, as in
# Istio (and "none of []" holds anyway).

source_field(_, []) := true

source_field("principals", patterns) if match.any_of(patterns, source_principal)

source_field("notPrincipals", patterns) if not match.any_of(patterns, source_principal)

source_field("requestPrincipals", patterns) if match.any_of(patterns, request_principal)

source_field("notRequestPrincipals", patterns) if not match.any_of(patterns, request_principal)

source_field("namespaces", patterns) if match.any_of(patterns, source_namespace)

source_field("notNamespaces", patterns) if not match.any_of(patterns, source_namespace)

source_field("ipBlocks", blocks) if in_blocks(blocks, source_ip)

source_field("notIpBlocks", blocks) if not in_blocks(blocks, source_ip)

source_field("remoteIpBlocks", blocks) if in_blocks(blocks, remote_ip)

source_field("notRemoteIpBlocks", blocks) if not in_blocks(blocks, remote_ip)

operation_field(_, []) := true

operation_field("hosts", patterns) if host_matches(patterns)

operation_field("notHosts", patterns) if not host_matches(patterns)

operation_field("ports", ports) if destination_port in ports

operation_field("notPorts", ports) if not destination_port in ports

operation_field("methods", patterns) if match.any_of(patterns, method)

operation_field("notMethods", patterns) if not match.any_of(patterns, method)

operation_field("paths", patterns) if match.any_of(patterns, path)

operation_field("notPaths", patterns) if not match.any_of(patterns, path)

# host_matches: hosts match case-insensitively, with or without the port.
host_matches(patterns) if {
	some h in host_forms
	match.any_of_fold(patterns, h)
}

# in_blocks(blocks, ip): ip is in one of the blocks, each an IP or a CIDR (a bare
# IP is the /32 or /128 of that address). No address is in no block.
in_blocks(blocks, ip) if {
	ip != ""
	some block in blocks
	net.cidr_contains(cidr(block), ip)
}

cidr(block) := block if {
	contains(block, "/")
} else := concat("", [block, "/128"]) if {
	contains(block, ":")
} else := concat("", [block, "/32"])

# ---------------------------------------------------------------------------
# Conditions (when): {key, values, notValues}. With values the attribute must
# match one of them, with notValues none of them (both when both are given). An
# attribute may have several values (a list claim, the audiences): one matching
# is enough. A missing attribute has no value, so matches no value; an unknown
# key never matches.

condition_matches(c) if {
	[kind, values] := attribute(c.key)
	wanted(kind, object.get(c, "values", []), values)
	not some_match(kind, object.get(c, "notValues", []), values)
}

wanted(_, [], _) := true

wanted(kind, patterns, values) if some_match(kind, patterns, values)

# some_match(kind, patterns, values): a value matches a pattern. IP attributes
# match IPs/CIDRs, ports match exactly, the rest match as Istio's strings.
some_match("string", patterns, values) if {
	some v in values
	match.any_of(patterns, v)
}

some_match("ip", blocks, values) if {
	some v in values
	in_blocks(blocks, v)
}

some_match("port", ports, values) if {
	some v in values
	v in ports
}

# attribute(key) is [KIND, VALUES]: how the key's values match, and the list of
# the request's values for it (a function of the key alone, so OPA computes it
# once per key and request however many policies test it).
attribute("source.ip") := ["ip", present(source_ip)]

attribute("remote.ip") := ["ip", present(remote_ip)]

attribute("destination.ip") := ["ip", present(destination_ip)]

attribute("destination.port") := ["port", present(destination_port)]

attribute("source.namespace") := ["string", present(source_namespace)]

attribute("source.principal") := ["string", present(source_principal)]

attribute("request.auth.principal") := ["string", present(request_principal)]

attribute("request.auth.audiences") := ["string", object.get(request_auth, "audiences", [])]

attribute("request.auth.presenter") := ["string", present(object.get(request_auth, "presenter", ""))]

attribute("connection.sni") := ["string", present(sni)]

# request.headers[NAME]: header names are lower-case in the input.
attribute(key) := ["string", present(object.get(headers, lower(substring(key, 16, count(key) - 17)), ""))] if {
	startswith(key, "request.headers[")
	endswith(key, "]")
}

# request.auth.claims[A] and nested claims request.auth.claims[A][B]...
attribute(key) := ["string", claim_values(object.get(request_auth, array.concat(["claims"], path), null))] if {
	startswith(key, "request.auth.claims[")
	endswith(key, "]")
	path := split(substring(key, 20, count(key) - 21), "][")
}

# present(s) is [s], or [] for "" (no value).
present("") := []

present(s) := [s] if s != ""

# claim_values: a string claim is one value, a list claim one value per element;
# numbers and booleans compare as their JSON text ("3", "true"); anything else has
# none.
claim_values(v) := [v] if {
	is_string(v)
} else := [s |
	some x in v
	s := scalar_string(x)
] if {
	is_array(v)
} else := [scalar_string(v)] if {
	scalar_string(v)
} else := []

scalar_string(x) := x if {
	is_string(x)
} else := json.marshal(x) if {
	type_name(x) in {"number", "boolean"}
}

# ---------------------------------------------------------------------------
# The request's attributes.

default headers := {}

headers := input.attributes.request.http.headers

# source_principal is the mTLS peer's identity without "spiffe://",
# e.g. "cluster.local/ns/default/sa/sleep"; "" without mTLS.
default source_principal := ""

source_principal := trim_prefix(input.attributes.source.principal, "spiffe://") if {
	is_string(input.attributes.source.principal)
}

# source_namespace is NS of the peer identity TRUST_DOMAIN/ns/NS/sa/SA.
default source_namespace := ""

source_namespace := parts[2] if {
	parts := split(source_principal, "/")
	parts[1] == "ns"
	parts[3] == "sa"
}

# request_auth is request.auth.* of the valid JWT ({} without one).
default request_auth := {}

request_auth := jwt.auth

# request_principal is "ISS/SUB" of the valid JWT, "" without one.
default request_principal := ""

request_principal := jwt.auth.principal

default source_ip := ""

source_ip := input.attributes.source.address.socketAddress.address

# remote_ip is the original client's address: x-envoy-external-address, else the
# first x-forwarded-for entry, else the peer's address.
remote_ip := ip if {
	ip := trim_space(headers["x-envoy-external-address"])
	ip != ""
} else := ip if {
	ip := trim_space(split(headers["x-forwarded-for"], ",")[0])
	ip != ""
} else := source_ip

default destination_ip := ""

destination_ip := input.attributes.destination.address.socketAddress.address

# destination_port is the port as a string, as Istio's ports lists have it.
default destination_port := ""

destination_port := format_int(input.attributes.destination.address.socketAddress.portValue, 10)

default sni := ""

sni := input.attributes.tlsSession.sni

default method := ""

method := input.attributes.request.http.method

# path is the request's path without the query string.
default path := ""

path := split(input.attributes.request.http.path, "?")[0]

default host := ""

host := input.attributes.request.http.host

# host_forms are the host as sent and without its port, if it has one
# ("example.com:8080", "10.0.0.1:80", "[::1]:8080").
host_forms contains host

host_forms contains h if {
	[h, port] := split(host, ":")
	digits(port)
}

host_forms contains h if {
	startswith(host, "[")
	i := indexof(host, "]:")
	i > 0
	digits(substring(host, i + 2, -1))
	h := substring(host, 0, i + 1)
}

digits(s) if {
	s != ""
	trim_left(s, "0123456789") == ""
}
