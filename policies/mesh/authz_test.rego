package palisade.mesh.authz_test

import data.palisade.mesh.authz

# base is a request from default/sleep (mTLS) to reviews, through a proxy.
base := {
	"attributes": {
		"source": {
			"address": {"socketAddress": {"address": "10.1.2.3", "portValue": 40000}},
			"principal": "spiffe://cluster.local/ns/default/sa/sleep",
		},
		"destination": {
			"address": {"socketAddress": {"address": "10.9.9.9", "portValue": 9080}},
			"principal": "spiffe://cluster.local/ns/default/sa/reviews",
		},
		"request": {"http": {
			"method": "GET",
			"path": "/api/v1/books?id=1",
			"host": "Reviews.default.svc.cluster.local:9080",
			"headers": {
				"x-token": "abc",
				"x-forwarded-for": "203.0.113.7, 10.0.0.1",
				"user-agent": "curl/8",
			},
		}},
		"tlsSession": {"sni": "outbound_.9080_._.reviews.default.svc.cluster.local"},
	},
	"palisade": {"workload": {"namespace": "default", "labels": {"app": "reviews"}}},
}

# auth is the request.auth of a valid JWT.
auth := {
	"principal": "https://issuer.example.com/alice",
	"audiences": ["bookinfo", "web"],
	"presenter": "web-client",
	"claims": {
		"iss": "https://issuer.example.com",
		"sub": "alice",
		"groups": ["dev", "ops"],
		"level": 3,
		"admin": false,
		"org": {"team": {"name": "books"}},
	},
}

# A case is a rule, a change to the base request (merged into it), optionally the
# request.auth of a JWT, and whether the rule matches.
cases := [
	{"name": "empty rule matches everything", "rule": {}, "want": true},
	{"name": "empty from and to lists match", "rule": {"from": [], "to": [], "when": []}, "want": true},
	# principals
	{"name": "principal exact", "rule": {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}, "want": true},
	{"name": "principal prefix", "rule": {"from": [{"source": {"principals": ["cluster.local/ns/default/*"]}}]}, "want": true},
	{"name": "principal other", "rule": {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/other"]}}]}, "want": false},
	{"name": "principal with spiffe:// never matches", "rule": {"from": [{"source": {"principals": ["spiffe://cluster.local/ns/default/sa/sleep"]}}]}, "want": false},
	{
		"name": "principal * needs mTLS", "rule": {"from": [{"source": {"principals": ["*"]}}]},
		"patch": {"attributes": {"source": {"principal": ""}}}, "want": false,
	},
	{"name": "notPrincipals excludes", "rule": {"from": [{"source": {"notPrincipals": ["*/sa/sleep"]}}]}, "want": false},
	{"name": "notPrincipals other", "rule": {"from": [{"source": {"notPrincipals": ["*/sa/other"]}}]}, "want": true},
	{
		"name": "notPrincipals * matches plaintext", "rule": {"from": [{"source": {"notPrincipals": ["*"]}}]},
		"patch": {"attributes": {"source": {"principal": ""}}}, "want": true,
	},
	# namespaces
	{"name": "namespace", "rule": {"from": [{"source": {"namespaces": ["default"]}}]}, "want": true},
	{"name": "namespace other", "rule": {"from": [{"source": {"namespaces": ["prod"]}}]}, "want": false},
	{"name": "namespace prefix", "rule": {"from": [{"source": {"namespaces": ["def*"]}}]}, "want": true},
	{"name": "notNamespaces", "rule": {"from": [{"source": {"notNamespaces": ["default"]}}]}, "want": false},
	{"name": "notNamespaces other", "rule": {"from": [{"source": {"notNamespaces": ["prod", "kube-*"]}}]}, "want": true},
	{
		"name": "namespace without mTLS", "rule": {"from": [{"source": {"namespaces": ["*"]}}]},
		"patch": {"attributes": {"source": {"principal": ""}}}, "want": false,
	},
	# request principals
	{"name": "requestPrincipals", "rule": {"from": [{"source": {"requestPrincipals": ["https://issuer.example.com/*"]}}]}, "auth": auth, "want": true},
	{"name": "requestPrincipals * without JWT", "rule": {"from": [{"source": {"requestPrincipals": ["*"]}}]}, "want": false},
	{"name": "notRequestPrincipals * without JWT", "rule": {"from": [{"source": {"notRequestPrincipals": ["*"]}}]}, "want": true},
	{"name": "notRequestPrincipals * with JWT", "rule": {"from": [{"source": {"notRequestPrincipals": ["*"]}}]}, "auth": auth, "want": false},
	# IP blocks
	{"name": "ipBlocks CIDR", "rule": {"from": [{"source": {"ipBlocks": ["10.1.0.0/16"]}}]}, "want": true},
	{"name": "ipBlocks bare IP", "rule": {"from": [{"source": {"ipBlocks": ["10.1.2.3"]}}]}, "want": true},
	{"name": "ipBlocks bare IP, other", "rule": {"from": [{"source": {"ipBlocks": ["10.1.2.4"]}}]}, "want": false},
	{"name": "ipBlocks other CIDR", "rule": {"from": [{"source": {"ipBlocks": ["192.168.0.0/16", "10.2.0.0/16"]}}]}, "want": false},
	{
		"name": "ipBlocks IPv6", "rule": {"from": [{"source": {"ipBlocks": ["fd00::/8"]}}]},
		"patch": {"attributes": {"source": {"address": {"socketAddress": {"address": "fd00::1"}}}}}, "want": true,
	},
	{
		"name": "ipBlocks bare IPv6", "rule": {"from": [{"source": {"ipBlocks": ["fd00::1"]}}]},
		"patch": {"attributes": {"source": {"address": {"socketAddress": {"address": "fd00::1"}}}}}, "want": true,
	},
	{"name": "notIpBlocks", "rule": {"from": [{"source": {"notIpBlocks": ["10.0.0.0/8"]}}]}, "want": false},
	{"name": "notIpBlocks other", "rule": {"from": [{"source": {"notIpBlocks": ["192.168.0.0/16"]}}]}, "want": true},
	{"name": "remoteIpBlocks: first x-forwarded-for", "rule": {"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}, "want": true},
	{"name": "remoteIpBlocks: not the proxy", "rule": {"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/8"]}}]}, "want": false},
	{
		"name": "remoteIpBlocks: x-envoy-external-address first",
		"rule": {"from": [{"source": {"remoteIpBlocks": ["198.51.100.9"]}}]},
		"patch": {"attributes": {"request": {"http": {"headers": {"x-envoy-external-address": "198.51.100.9"}}}}}, "want": true,
	},
	{
		"name": "remoteIpBlocks: the peer without proxy headers",
		"rule": {"from": [{"source": {"remoteIpBlocks": ["10.1.2.3"]}}]},
		"patch": {"attributes": {"request": {"http": {"headers": {"x-forwarded-for": ""}}}}}, "want": true,
	},
	{"name": "notRemoteIpBlocks", "rule": {"from": [{"source": {"notRemoteIpBlocks": ["203.0.113.7"]}}]}, "want": false},
	{"name": "notRemoteIpBlocks other", "rule": {"from": [{"source": {"notRemoteIpBlocks": ["10.0.0.0/8"]}}]}, "want": true},
	# several fields and several sources
	{"name": "all fields of a source must match", "rule": {"from": [{"source": {"namespaces": ["default"], "ipBlocks": ["192.168.0.0/16"]}}]}, "want": false},
	{"name": "all fields of a source match", "rule": {"from": [{"source": {"namespaces": ["default"], "notIpBlocks": ["192.168.0.0/16"]}}]}, "want": true},
	{"name": "one source of several", "rule": {"from": [{"source": {"namespaces": ["prod"]}}, {"source": {"namespaces": ["default"]}}]}, "want": true},
	{"name": "unknown source field", "rule": {"from": [{"source": {"serviceAccounts": ["sleep"]}}]}, "want": false},
	{"name": "empty list in a source is no constraint", "rule": {"from": [{"source": {"principals": [], "namespaces": ["default"]}}]}, "want": true},
	{"name": "from entry without source", "rule": {"from": [{}]}, "want": true},
	# hosts
	{"name": "host without port, any case", "rule": {"to": [{"operation": {"hosts": ["reviews.default.svc.cluster.local"]}}]}, "want": true},
	{"name": "host with port", "rule": {"to": [{"operation": {"hosts": ["reviews.default.svc.cluster.local:9080"]}}]}, "want": true},
	{"name": "host with another port", "rule": {"to": [{"operation": {"hosts": ["reviews.default.svc.cluster.local:80"]}}]}, "want": false},
	{"name": "host suffix", "rule": {"to": [{"operation": {"hosts": ["*.default.svc.cluster.local"]}}]}, "want": true},
	{"name": "host other", "rule": {"to": [{"operation": {"hosts": ["ratings"]}}]}, "want": false},
	{"name": "notHosts", "rule": {"to": [{"operation": {"notHosts": ["REVIEWS.*"]}}]}, "want": false},
	{"name": "notHosts other", "rule": {"to": [{"operation": {"notHosts": ["ratings*"]}}]}, "want": true},
	{"name": "empty list in an operation is no constraint", "rule": {"to": [{"operation": {"hosts": [], "methods": ["GET"]}}]}, "want": true},
	{
		"name": "IPv6 host with port", "rule": {"to": [{"operation": {"hosts": ["[fd00::9]"]}}]},
		"patch": {"attributes": {"request": {"http": {"host": "[fd00::9]:9080"}}}}, "want": true,
	},
	# ports, methods, paths
	{"name": "port", "rule": {"to": [{"operation": {"ports": ["9080"]}}]}, "want": true},
	{"name": "port other", "rule": {"to": [{"operation": {"ports": ["80", "443"]}}]}, "want": false},
	{"name": "notPorts", "rule": {"to": [{"operation": {"notPorts": ["9080"]}}]}, "want": false},
	{"name": "notPorts other", "rule": {"to": [{"operation": {"notPorts": ["80"]}}]}, "want": true},
	{"name": "method", "rule": {"to": [{"operation": {"methods": ["POST", "GET"]}}]}, "want": true},
	{"name": "method other", "rule": {"to": [{"operation": {"methods": ["POST"]}}]}, "want": false},
	{"name": "method is case-sensitive", "rule": {"to": [{"operation": {"methods": ["get"]}}]}, "want": false},
	{"name": "notMethods", "rule": {"to": [{"operation": {"notMethods": ["GET"]}}]}, "want": false},
	{"name": "notMethods other", "rule": {"to": [{"operation": {"notMethods": ["POST", "DELETE"]}}]}, "want": true},
	{"name": "path without the query", "rule": {"to": [{"operation": {"paths": ["/api/v1/books"]}}]}, "want": true},
	{"name": "path prefix", "rule": {"to": [{"operation": {"paths": ["/api/*"]}}]}, "want": true},
	{"name": "path suffix", "rule": {"to": [{"operation": {"paths": ["*/books"]}}]}, "want": true},
	{"name": "path other", "rule": {"to": [{"operation": {"paths": ["/api/v2/*"]}}]}, "want": false},
	{"name": "path with the query does not match", "rule": {"to": [{"operation": {"paths": ["/api/v1/books?id=1"]}}]}, "want": false},
	{"name": "notPaths", "rule": {"to": [{"operation": {"notPaths": ["/admin*"]}}]}, "want": true},
	{"name": "notPaths excludes", "rule": {"to": [{"operation": {"notPaths": ["/api*"]}}]}, "want": false},
	{"name": "all fields of an operation must match", "rule": {"to": [{"operation": {"methods": ["GET"], "paths": ["/admin"]}}]}, "want": false},
	{"name": "one operation of several", "rule": {"to": [{"operation": {"methods": ["POST"]}}, {"operation": {"paths": ["/api/*"]}}]}, "want": true},
	{"name": "from and to must both match", "rule": {"from": [{"source": {"namespaces": ["default"]}}], "to": [{"operation": {"methods": ["POST"]}}]}, "want": false},
	{"name": "from and to both match", "rule": {"from": [{"source": {"namespaces": ["default"]}}], "to": [{"operation": {"methods": ["GET"]}}]}, "want": true},
	# when
	{"name": "header value", "rule": {"when": [{"key": "request.headers[x-token]", "values": ["abc"]}]}, "want": true},
	{"name": "header name in any case", "rule": {"when": [{"key": "request.headers[X-Token]", "values": ["abc"]}]}, "want": true},
	{"name": "header other value", "rule": {"when": [{"key": "request.headers[x-token]", "values": ["xyz"]}]}, "want": false},
	{"name": "header prefix", "rule": {"when": [{"key": "request.headers[user-agent]", "values": ["curl/*"]}]}, "want": true},
	{"name": "missing header, values *", "rule": {"when": [{"key": "request.headers[x-missing]", "values": ["*"]}]}, "want": false},
	{"name": "missing header, notValues", "rule": {"when": [{"key": "request.headers[x-missing]", "notValues": ["abc"]}]}, "want": true},
	{"name": "header notValues", "rule": {"when": [{"key": "request.headers[x-token]", "notValues": ["abc"]}]}, "want": false},
	{"name": "values and notValues", "rule": {"when": [{"key": "request.headers[user-agent]", "values": ["curl/*"], "notValues": ["curl/8"]}]}, "want": false},
	{"name": "all conditions must match", "rule": {"when": [{"key": "request.headers[x-token]", "values": ["abc"]}, {"key": "source.namespace", "values": ["prod"]}]}, "want": false},
	{"name": "source.ip", "rule": {"when": [{"key": "source.ip", "values": ["10.1.0.0/16"]}]}, "want": true},
	{"name": "source.ip notValues", "rule": {"when": [{"key": "source.ip", "notValues": ["10.1.2.3"]}]}, "want": false},
	{"name": "remote.ip", "rule": {"when": [{"key": "remote.ip", "values": ["203.0.113.7"]}]}, "want": true},
	{"name": "destination.ip", "rule": {"when": [{"key": "destination.ip", "values": ["10.9.0.0/16"]}]}, "want": true},
	{"name": "destination.port", "rule": {"when": [{"key": "destination.port", "values": ["9080"]}]}, "want": true},
	{"name": "destination.port other", "rule": {"when": [{"key": "destination.port", "values": ["80"]}]}, "want": false},
	{"name": "connection.sni", "rule": {"when": [{"key": "connection.sni", "values": ["*.reviews.default.svc.cluster.local"]}]}, "want": true},
	{"name": "source.namespace", "rule": {"when": [{"key": "source.namespace", "values": ["default"]}]}, "want": true},
	{"name": "source.principal", "rule": {"when": [{"key": "source.principal", "values": ["cluster.local/ns/default/sa/sleep"]}]}, "want": true},
	{"name": "request.auth.principal", "rule": {"when": [{"key": "request.auth.principal", "values": ["https://issuer.example.com/alice"]}]}, "auth": auth, "want": true},
	{"name": "request.auth.principal without JWT", "rule": {"when": [{"key": "request.auth.principal", "values": ["*"]}]}, "want": false},
	{"name": "request.auth.audiences, one of them", "rule": {"when": [{"key": "request.auth.audiences", "values": ["web"]}]}, "auth": auth, "want": true},
	{"name": "request.auth.audiences, none", "rule": {"when": [{"key": "request.auth.audiences", "values": ["other"]}]}, "auth": auth, "want": false},
	{"name": "request.auth.presenter", "rule": {"when": [{"key": "request.auth.presenter", "values": ["web-*"]}]}, "auth": auth, "want": true},
	{"name": "claim", "rule": {"when": [{"key": "request.auth.claims[sub]", "values": ["alice"]}]}, "auth": auth, "want": true},
	{"name": "claim other", "rule": {"when": [{"key": "request.auth.claims[sub]", "values": ["bob"]}]}, "auth": auth, "want": false},
	{"name": "list claim, one element", "rule": {"when": [{"key": "request.auth.claims[groups]", "values": ["ops"]}]}, "auth": auth, "want": true},
	{"name": "list claim, notValues", "rule": {"when": [{"key": "request.auth.claims[groups]", "notValues": ["ops"]}]}, "auth": auth, "want": false},
	{"name": "nested claim", "rule": {"when": [{"key": "request.auth.claims[org][team][name]", "values": ["books"]}]}, "auth": auth, "want": true},
	{"name": "nested claim, missing", "rule": {"when": [{"key": "request.auth.claims[org][dept]", "values": ["*"]}]}, "auth": auth, "want": false},
	{"name": "number claim", "rule": {"when": [{"key": "request.auth.claims[level]", "values": ["3"]}]}, "auth": auth, "want": true},
	{"name": "boolean claim", "rule": {"when": [{"key": "request.auth.claims[admin]", "values": ["false"]}]}, "auth": auth, "want": true},
	{"name": "claim without JWT", "rule": {"when": [{"key": "request.auth.claims[sub]", "values": ["*"]}]}, "want": false},
	{"name": "claim without JWT, notValues", "rule": {"when": [{"key": "request.auth.claims[sub]", "notValues": ["alice"]}]}, "want": true},
	{"name": "unknown key", "rule": {"when": [{"key": "experimental.x", "values": ["*"]}]}, "want": false},
	{"name": "unknown key, notValues", "rule": {"when": [{"key": "experimental.x", "notValues": ["a"]}]}, "want": false},
]

# result is true or false, so that a table can expect either.
result(rule) if authz.rule_matches(rule)

result(rule) := false if not authz.rule_matches(rule)

test_rule_matches if {
	every c in cases {
		inp := object.union(base, object.get(c, "patch", {}))
		got := result(c.rule) with input as inp with data.palisade.mesh.jwt.auth as object.get(c, "auth", {})
		print_mismatch(c, got)
		got == c.want
	}
}

# print_mismatch prints the case that fails (opa test -v shows it).
print_mismatch(c, got) if {
	got != c.want
	print("case", c.name, "want", c.want, "got", got)
} else := true

attribute_cases := [
	{"name": "peer identity", "patch": {}, "want": {"principal": "cluster.local/ns/default/sa/sleep", "namespace": "default", "remote": "203.0.113.7", "port": "9080", "path": "/api/v1/books"}},
	{
		"name": "no peer, no proxy headers, no query",
		"patch": {"attributes": {"source": {"principal": ""}, "request": {"http": {"path": "/x", "headers": {"x-forwarded-for": ""}}}}},
		"want": {"principal": "", "namespace": "", "remote": "10.1.2.3", "port": "9080", "path": "/x"},
	},
	{
		"name": "ns without sa is not the SPIFFE form",
		"patch": {"attributes": {"source": {"principal": "spiffe://cluster.local/ns/default/x/y"}}},
		"want": {"principal": "cluster.local/ns/default/x/y", "namespace": "", "remote": "203.0.113.7", "port": "9080", "path": "/api/v1/books"},
	},
	{
		"name": "principal not in the SPIFFE form has no namespace",
		"patch": {"attributes": {"source": {"principal": "spiffe://cluster.local/custom/default/sa/x"}}},
		"want": {"principal": "cluster.local/custom/default/sa/x", "namespace": "", "remote": "203.0.113.7", "port": "9080", "path": "/api/v1/books"},
	},
]

test_attributes if {
	every c in attribute_cases {
		inp := object.union(base, c.patch)
		got := {
			"principal": authz.source_principal, "namespace": authz.source_namespace,
			"remote": authz.remote_ip, "port": authz.destination_port, "path": authz.path,
		} with input as inp
		print_mismatch(c, got)
		got == c.want
	}
}

test_attributes_of_an_empty_input if {
	got := {
		"principal": authz.source_principal, "namespace": authz.source_namespace, "ip": authz.source_ip,
		"remote": authz.remote_ip, "port": authz.destination_port, "path": authz.path, "method": authz.method,
		"destination": authz.destination_ip, "sni": authz.sni, "auth": authz.request_auth, "request_principal": authz.request_principal,
	} with input as {}
	got == {
		"principal": "", "namespace": "", "ip": "", "remote": "", "port": "", "path": "", "method": "",
		"destination": "", "sni": "", "auth": {}, "request_principal": "",
	}
	not authz.rule_matches({"from": [{"source": {"ipBlocks": ["0.0.0.0/0"]}}]}) with input as {}
	authz.rule_matches({"from": [{"source": {"notIpBlocks": ["0.0.0.0/0"]}}]}) with input as {}
}

test_host_forms if {
	authz.host_forms == {"a.example.com:8080", "a.example.com"} with input as {"attributes": {"request": {"http": {"host": "a.example.com:8080"}}}}
	authz.host_forms == {"a.example.com"} with input as {"attributes": {"request": {"http": {"host": "a.example.com"}}}}
	authz.host_forms == {"[::1]:80", "[::1]"} with input as {"attributes": {"request": {"http": {"host": "[::1]:80"}}}}
	authz.host_forms == {"::1"} with input as {"attributes": {"request": {"http": {"host": "::1"}}}}
	authz.host_forms == {"a:b"} with input as {"attributes": {"request": {"http": {"host": "a:b"}}}}
}

# first_match is the index of the first matching rule; no rules match nothing.
first_match_cases := [
	{"name": "no rules", "spec": {}, "want": "none"},
	{"name": "empty rules", "spec": {"rules": []}, "want": "none"},
	{"name": "rule {}", "spec": {"rules": [{}]}, "want": 0},
	{"name": "second rule", "spec": {"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}, {}, {}]}, "want": 1},
	{"name": "no rule matches", "spec": {"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}, "want": "none"},
]

first_match(p) := i if {
	i := authz.first_match(p)
} else := "none"

test_first_match if {
	every c in first_match_cases {
		got := first_match({"spec": c.spec}) with input as base
		print_mismatch(c, got)
		got == c.want
	}
}

# config for the action tests: policies of every action in default.
ap(name, spec) := {"metadata": {"namespace": "default", "name": name}, "spec": spec}

get_only := {"to": [{"operation": {"methods": ["GET"]}}]}

post_only := {"to": [{"operation": {"methods": ["POST"]}}]}

config := {
	"root_namespace": "istio-system",
	"authorization_policies": {
		"default": [
			ap("allow-get", {"action": "ALLOW", "rules": [post_only, get_only]}),
			ap("allow-none", {"action": "ALLOW"}),
			ap("allow-post", {"action": "ALLOW", "rules": [post_only]}),
			ap("audit-get", {"action": "AUDIT", "rules": [get_only]}),
			ap("custom-get", {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [get_only]}),
			ap("deny-get", {"action": "DENY", "rules": [get_only]}),
			ap("deny-none", {"action": "DENY"}),
			ap("deny-post", {"action": "DENY", "rules": [post_only]}),
			ap("implicit-allow", {"rules": [{}]}),
		],
		"istio-system": [{"metadata": {"namespace": "istio-system", "name": "mesh-deny-get"}, "spec": {"action": "DENY", "rules": [get_only]}}],
	},
}

test_matches_by_action if {
	authz.allow_matches == {"default/allow-get": 1, "default/implicit-allow": 0} with input as base with data.palisade.config as config
	authz.deny_matches == {"default/deny-get": 0, "istio-system/mesh-deny-get": 0} with input as base with data.palisade.config as config
	authz.audit_matches == {"default/audit-get": 0} with input as base with data.palisade.config as config
	authz.custom_matches == {"default/custom-get": {"rule": 0, "provider": "ext"}} with input as base with data.palisade.config as config
	authz.allow_applies with input as base with data.palisade.config as config
	authz.allow_policies == {"default/allow-get", "default/allow-none", "default/allow-post", "default/implicit-allow"} with input as base
		with data.palisade.config as config
}
