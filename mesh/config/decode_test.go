package config_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// Minimal valid documents, one per kind; the bad cases below change one thing each.
const (
	serviceEntry = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, ports: {http: 8080}}]
`
	workloadEntry = `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop, labels: {team: a}}
spec:
  address: 10.0.0.2
  labels: {app: reviews}
  locality: us-east/zone1
`
	virtualService = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}, headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v1}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms}
`
	destinationRule = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
`
	peerAuthentication = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
`
	authorizationPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from:
    - source: {namespaces: [shop, "prod-*"], ipBlocks: [10.0.0.0/8, 10.1.2.3]}
    - source: {principals: [cluster.local/ns/shop/sa/a, "*/sa/b", "cluster.local/*"], requestPrincipals: ["*"], remoteIpBlocks: ["2001:db8::/32"]}
    to:
    - operation: {hosts: ["*.example.com", reviews], ports: ["9080"], methods: [GET], notMethods: [DELETE], paths: [/api/*, "*/info", /exact]}
    when:
    - {key: "request.headers[x-user]", values: [alice]}
    - {key: "request.auth.claims[groups][admin]", notValues: [x]}
    - {key: source.ip, values: [10.0.0.1]}
    - {key: destination.port, values: ["9080"]}
`
	customPolicy = `apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: [/admin/*]}}]}]
`
	requestAuthentication = `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules:
  - issuer: https://issuer.example.com
    jwksUri: https://issuer.example.com/jwks.json
    audiences: [reviews]
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
  - issuer: other
    jwks: '{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'
    timeout: 5s
`
	regoPolicy = `apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  provider: opa
  rego: |
    package reviews

    default allow := false

    allow if {
      input.attributes.request.http.method == "GET"
      data.palisade.config.root_namespace == "istio-system"
    }
`
)

func TestDecodeValid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want config.Key
	}{
		{"ServiceEntry", serviceEntry, config.Key{Kind: config.KindServiceEntry, Namespace: "shop", Name: "reviews"}},
		{"WorkloadEntry", workloadEntry, config.Key{Kind: config.KindWorkloadEntry, Namespace: "shop", Name: "reviews-v1"}},
		{"VirtualService", virtualService, config.Key{Kind: config.KindVirtualService, Namespace: "shop", Name: "reviews"}},
		{"DestinationRule", destinationRule, config.Key{Kind: config.KindDestinationRule, Namespace: "shop", Name: "reviews"}},
		{"PeerAuthentication", peerAuthentication, config.Key{Kind: config.KindPeerAuthentication, Namespace: "shop", Name: "reviews"}},
		{"PeerAuthentication v1beta1", strings.Replace(peerAuthentication, "/v1\n", "/v1beta1\n", 1), config.Key{Kind: config.KindPeerAuthentication, Namespace: "shop", Name: "reviews"}},
		{"namespace-wide PeerAuthentication", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}\n",
			config.Key{Kind: config.KindPeerAuthentication, Namespace: "shop", Name: "default"}},
		{"PeerAuthentication with an empty spec", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {}\n",
			config.Key{Kind: config.KindPeerAuthentication, Namespace: "shop", Name: "default"}},
		{"AuthorizationPolicy", authorizationPolicy, config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "reviews"}},
		{"AuthorizationPolicy v1beta1", strings.Replace(authorizationPolicy, "/v1\n", "/v1beta1\n", 1), config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "reviews"}},
		{"CUSTOM AuthorizationPolicy", customPolicy, config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "ext"}},
		{"ALLOW nothing", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {}\n",
			config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "deny-all"}},
		{"DENY everything", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n",
			config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "deny-all"}},
		{"AUDIT", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: audit, namespace: shop}\nspec: {action: AUDIT, rules: [{to: [{operation: {notPorts: [\"22\"]}}]}]}\n",
			config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "audit"}},
		{"RequestAuthentication", requestAuthentication, config.Key{Kind: config.KindRequestAuthentication, Namespace: "shop", Name: "jwt"}},
		{"RequestAuthentication presence OPTIONAL", strings.Replace(requestAuthentication, "timeout: 5s", "presence: OPTIONAL", 1), config.Key{Kind: config.KindRequestAuthentication, Namespace: "shop", Name: "jwt"}},
		{"RequestAuthentication v1beta1", strings.Replace(requestAuthentication, "/v1\n", "/v1beta1\n", 1), config.Key{Kind: config.KindRequestAuthentication, Namespace: "shop", Name: "jwt"}},
		{"RegoPolicy", regoPolicy, config.Key{Kind: config.KindRegoPolicy, Namespace: "shop", Name: "reviews"}},
		{"RegoPolicy with decision, without selector and provider",
			strings.NewReplacer("  selector: {matchLabels: {app: reviews}}\n  provider: opa\n", "  decision: verdict\n",
				"default allow := false\n", "verdict := {\"allowed\": allow, \"http_status\": 418}\n").Replace(regoPolicy),
			config.Key{Kind: config.KindRegoPolicy, Namespace: "shop", Name: "reviews"}},
		{"RegoPolicy with a ref head decision", strings.NewReplacer("default allow := false", "allow.allowed := true", "allow if", "other if").Replace(regoPolicy),
			config.Key{Kind: config.KindRegoPolicy, Namespace: "shop", Name: "reviews"}},
		{"v1beta1", strings.Replace(destinationRule, "/v1\n", "/v1beta1\n", 1), config.Key{Kind: config.KindDestinationRule, Namespace: "shop", Name: "reviews"}},
		{"v1alpha3", strings.Replace(destinationRule, "/v1\n", "/v1alpha3\n", 1), config.Key{Kind: config.KindDestinationRule, Namespace: "shop", Name: "reviews"}},
		{"default namespace", strings.Replace(destinationRule, ", namespace: shop", "", 1), config.Key{Kind: config.KindDestinationRule, Namespace: config.DefaultNamespace, Name: "reviews"}},
		{"header presence match", strings.Replace(virtualService, "{exact: jason}", "{}", 1), config.Key{Kind: config.KindVirtualService, Namespace: "shop", Name: "reviews"}},
		{"protobuf duration", strings.Replace(virtualService, "timeout: 2s", "timeout: 1.5s", 1), config.Key{Kind: config.KindVirtualService, Namespace: "shop", Name: "reviews"}},
		{"weighted split", strings.Replace(virtualService, "route: [{destination: {host: reviews, subset: v1}}]",
			"route: [{destination: {host: reviews}, weight: 80}, {destination: {host: ratings}, weight: 20}]", 1),
			config.Key{Kind: config.KindVirtualService, Namespace: "shop", Name: "reviews"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, diags := config.Decode("f.yaml", []byte(tt.doc))
			if len(diags) != 0 {
				t.Fatalf("unexpected diagnostics: %v", diags)
			}
			if len(objs) != 1 {
				t.Fatalf("got %d objects, want 1", len(objs))
			}
			o := objs[0]
			if o.Key != tt.want {
				t.Errorf("key = %v, want %v", o.Key, tt.want)
			}
			if o.Source != (config.Source{File: "f.yaml", Index: 0}) {
				t.Errorf("source = %v, want f.yaml[doc 0]", o.Source)
			}
			if o.Spec == nil {
				t.Error("spec is nil")
			}
		})
	}
}

func TestDecodeFields(t *testing.T) {
	objs, diags := config.Decode("f.yaml", []byte(virtualService+"---\n"+workloadEntry))
	if len(diags) != 0 || len(objs) != 2 {
		t.Fatalf("got %d objects and diagnostics %v, want 2 objects", len(objs), diags)
	}
	vs := objs[0].Spec.(*networking.VirtualService)
	// Durations in Go notation, as Istio accepts them.
	if got := vs.Http[0].Timeout.AsDuration(); got != 2*time.Second {
		t.Errorf("timeout = %v, want 2s", got)
	}
	if got := vs.Http[0].Retries.PerTryTimeout.AsDuration(); got != 500*time.Millisecond {
		t.Errorf("perTryTimeout = %v, want 500ms", got)
	}
	if got := objs[1].Labels["team"]; got != "a" {
		t.Errorf("metadata.labels[team] = %q, want a", got)
	}
	if objs[1].Source.Index != 1 {
		t.Errorf("second object has index %d, want 1", objs[1].Source.Index)
	}
}

func TestDecodeDocuments(t *testing.T) {
	tests := []struct {
		name        string
		data        string
		wantIndexes []int // Source.Index of each decoded object
		wantDiags   []config.Severity
	}{
		{"empty file", "", nil, nil},
		{"comments only", "# nothing here\n", nil, nil},
		{"leading separator", "---\n" + serviceEntry + "---\n" + destinationRule, []int{0, 1}, nil},
		{"trailing separator", serviceEntry + "---\n", []int{0}, nil},
		{"separator with comment", serviceEntry + "--- # next\n" + destinationRule, []int{0, 1}, nil},
		{"empty document between", serviceEntry + "---\n---\n" + destinationRule, []int{0, 2}, nil},
		{"CRLF line ends", strings.ReplaceAll(serviceEntry+"---\n"+destinationRule, "\n", "\r\n"), []int{0, 1}, nil},
		{"other kind skipped", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + destinationRule, []int{1}, []config.Severity{config.SeverityWarning}},
		{"bad document among good", serviceEntry + "---\nkind: [\n---\n" + destinationRule, []int{0, 2}, []config.Severity{config.SeverityError}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, diags := config.Decode("f.yaml", []byte(tt.data))
			var indexes []int
			for _, o := range objs {
				indexes = append(indexes, o.Source.Index)
			}
			if !slices.Equal(indexes, tt.wantIndexes) {
				t.Errorf("object indexes = %v, want %v", indexes, tt.wantIndexes)
			}
			var sevs []config.Severity
			for _, d := range diags {
				sevs = append(sevs, d.Severity)
			}
			if !slices.Equal(sevs, tt.wantDiags) {
				t.Errorf("diagnostics = %v, want severities %v", diags, tt.wantDiags)
			}
		})
	}
}

func TestDecodeInvalid(t *testing.T) {
	// replace applies old→new pairs to a valid document.
	replace := func(doc string, oldNew ...string) string {
		out := strings.NewReplacer(oldNew...).Replace(doc)
		if out == doc {
			panic("replacement did not change the document: " + oldNew[0])
		}
		return out
	}
	const se, we, vs, dr, pa = serviceEntry, workloadEntry, virtualService, destinationRule, peerAuthentication
	const ap, cp, ra, rp = authorizationPolicy, customPolicy, requestAuthentication, regoPolicy
	tests := []struct {
		name string
		doc  string
		want string // the field path (or fragment of the message) the diagnostic must name
	}{
		{"invalid YAML", "kind: [", "invalid YAML"},
		{"not an object", "- a\n- b\n", "not a Kubernetes-style object"},
		{"no kind", replace(dr, "kind: DestinationRule\n", ""), "kind"},
		{"no apiVersion", replace(dr, "apiVersion: networking.istio.io/v1\n", ""), "apiVersion"},
		{"unsupported version", replace(dr, "istio.io/v1\n", "istio.io/v2\n"), "apiVersion"},
		{"no name", replace(dr, "name: reviews, ", ""), "metadata.name"},
		{"bad name", replace(dr, "name: reviews", "name: Reviews_1"), "metadata.name"},
		{"bad namespace", replace(dr, "namespace: shop", "namespace: a.b"), "metadata.namespace"},
		{"no spec", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\n", "spec"},
		{"spec not an object", replace(dr, "spec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n", "spec: [1]\n"), "spec"},
		{"unknown spec field", replace(dr, "host:", "hots:"), "hots"},
		{"wrong field type", replace(dr, "host: reviews", "host: [reviews]"), "host"},
		{"bad duration", replace(vs, "timeout: 2s", "timeout: soon"), "timeout"},

		{"SE no hosts", replace(se, "hosts: [reviews.shop.svc.cluster.local]", "hosts: []"), "spec.hosts"},
		{"SE wildcard host", replace(se, "hosts: [reviews.shop.svc.cluster.local]", "hosts: ['*']"), "spec.hosts[0]"},
		{"SE bad host", replace(se, "hosts: [reviews.shop.svc.cluster.local]", "hosts: [a, 'b c']"), "spec.hosts[1]"},
		{"SE bad address", replace(se, "resolution:", "addresses: [10.0.0.0/33]\n  resolution:"), "spec.addresses[0]"},
		{"SE no ports", replace(se, "ports: [{number: 9080, name: http, protocol: HTTP}]", "ports: []"), "spec.ports"},
		{"SE port out of range", replace(se, "number: 9080", "number: 70000"), "spec.ports[0].number"},
		{"SE port name missing", replace(se, "name: http, ", ""), "spec.ports[0].name"},
		{"SE duplicate port name", replace(se, "ports: [{number: 9080, name: http, protocol: HTTP}]",
			"ports: [{number: 9080, name: http}, {number: 9081, name: http}]"), "spec.ports[1].name"},
		{"SE unknown protocol", replace(se, "protocol: HTTP", "protocol: SMTP"), "spec.ports[0].protocol"},
		{"SE selector and endpoints", replace(se, "resolution:", "workloadSelector: {labels: {app: x}}\n  resolution:"), "spec.workloadSelector"},
		{"SE STATIC endpoint not IP", replace(se, "address: 10.0.0.1", "address: reviews.example.com"), "spec.endpoints[0].address"},
		{"SE endpoint unknown port", replace(se, "ports: {http: 8080}", "ports: {grpc: 8080}"), "spec.endpoints[0].ports"},
		{"SE endpoints need resolution", replace(se, "resolution: STATIC", "resolution: NONE"), "spec.resolution"},
		{"SE bad exportTo", replace(se, "resolution:", "exportTo: [Shop]\n  resolution:"), "spec.exportTo[0]"},

		{"WE no address", replace(we, "address: 10.0.0.2", "network: n1"), "spec.address"},
		{"WE unix socket", replace(we, "address: 10.0.0.2", "address: unix:///var/run/app.sock"), "spec.address"},
		{"WE bad port", replace(we, "locality:", "ports: {http: 0}\n  locality:"), "spec.ports[http]"},
		{"WE bad locality", replace(we, "us-east/zone1", "a/b/c/d"), "spec.locality"},

		{"VS no routes", replace(vs, "  http:\n", "  tcp: []\n  x:\n"), "x"}, // unknown field first
		{"VS no http, tcp or tls", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [a]}\n", "spec"},
		{"VS route without destination", replace(vs, "route: [{destination: {host: reviews, subset: v1}}]", "route: [{weight: 100}]"), "spec.http[0].route[0].destination"},
		{"VS empty destination host", replace(vs, "host: reviews, subset: v1", "subset: v1"), "spec.http[0].route[0].destination.host"},
		{"VS wildcard destination", replace(vs, "host: reviews, subset: v1", "host: '*'"), "spec.http[0].route[0].destination.host"},
		{"VS negative weight", replace(vs, "route: [{destination: {host: reviews, subset: v1}}]",
			"route: [{destination: {host: a}, weight: -10}, {destination: {host: b}, weight: 110}]"), "spec.http[0].route[0].weight"},
		{"VS weights not 100", replace(vs, "route: [{destination: {host: reviews, subset: v1}}]",
			"route: [{destination: {host: a}, weight: 10}, {destination: {host: b}, weight: 20}]"), "spec.http[0].route"},
		{"VS bad regex", replace(vs, "prefix: /api", "regex: '(unclosed'"), "spec.http[0].match[0].uri.regex"},
		{"VS uppercase header", replace(vs, "end-user:", "End-User:"), "spec.http[0].match[0].headers[End-User]"},
		{"VS empty URI match", replace(vs, "prefix: /api", ""), "spec.http[0].match[0].uri"},
		{"VS duration not a string", replace(vs, "timeout: 2s", "timeout: 2"), "spec.http[0].timeout"},
		{"VS bad duration in list", replace(vs, "perTryTimeout: 500ms", "perTryTimeout: 5 minutes"), "spec.http[0].retries.perTryTimeout"},
		{"VS zero timeout", replace(vs, "timeout: 2s", "timeout: 0s"), "spec.http[0].timeout"},
		{"VS negative retries", replace(vs, "attempts: 3", "attempts: -1"), "spec.http[0].retries.attempts"},
		{"VS bad destination port", replace(vs, "subset: v1", "port: {number: 0}"), "spec.http[0].route[0].destination.port.number"},

		{"DR no host", replace(dr, "host: reviews\n", ""), "spec.host"},
		{"DR subset without name", replace(dr, "name: v1, ", ""), "spec.subsets[0].name"},
		{"DR duplicate subset", replace(dr, "subsets: [{name: v1, labels: {version: v1}}]",
			"subsets: [{name: v1}, {name: v1}]"), "spec.subsets[1].name"},
		{"DR bad subset name", replace(dr, "name: v1", "name: V_1"), "spec.subsets[0].name"},
		{"PA unsupported version", replace(pa, "security.istio.io/v1\n", "security.istio.io/v1alpha3\n"), "apiVersion"},
		{"PA unknown mode", replace(pa, "mode: STRICT", "mode: STRICTER"), "spec.mtls.mode"},
		{"PA mode number", replace(pa, "mode: STRICT", "mode: 7"), "spec.mtls.mode"},
		{"PA unknown port mode", replace(pa, "mode: DISABLE", "mode: OFF"), "spec.portLevelMtls[8080].mode"},
		{"PA port-level without selector", replace(pa, "  selector: {matchLabels: {app: reviews}}\n", ""), "spec.portLevelMtls"},
		{"PA empty selector", replace(pa, "{matchLabels: {app: reviews}}", "{}"), "spec.selector.matchLabels"},
		{"PA wildcard in selector", replace(pa, "app: reviews", "app: '*'"), "spec.selector.matchLabels[app]"},
		{"PA port 0", replace(pa, "8080:", "0:"), "spec.portLevelMtls[0]"},
		{"PA port out of range", replace(pa, "8080:", "70000:"), "spec.portLevelMtls[70000]"},
		{"PA empty port-level", replace(pa, "  portLevelMtls:\n    8080: {mode: DISABLE}\n", "  portLevelMtls: {}\n"), "spec.portLevelMtls"},
		{"PA unknown field", replace(pa, "mtls:", "mTLS:"), "mTLS"},

		{"AP unsupported version", replace(ap, "security.istio.io/v1\n", "security.istio.io/v2\n"), "apiVersion"},
		{"AP unknown field", replace(ap, "action:", "verdict:"), "verdict"},
		{"AP unknown action", replace(ap, "action: DENY", "action: REJECT"), "spec.action"},
		{"AP empty selector", replace(ap, "{matchLabels: {app: reviews}}", "{}"), "spec.selector.matchLabels"},
		{"AP wildcard in selector", replace(ap, "app: reviews", "app: 'rev*'"), "spec.selector.matchLabels[app]"},
		{"AP targetRef", replace(ap, "  action:", "  targetRef: {kind: Service, name: reviews}\n  action:"), "spec.targetRef: not supported"},
		{"AP targetRefs", replace(ap, "  selector: {matchLabels: {app: reviews}}\n", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n"), "spec.targetRefs: not supported"},
		{"AP DENY without rules", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {action: DENY}\n", "spec.rules"},
		{"AP CUSTOM without provider", replace(cp, "  provider: {name: opa}\n", ""), "spec.provider.name"},
		{"AP CUSTOM provider without name", replace(cp, "{name: opa}", "{}"), "spec.provider.name"},
		{"AP provider without CUSTOM", replace(cp, "action: CUSTOM", "action: ALLOW"), "spec.provider: only allowed with action CUSTOM"},
		{"AP provider with default action", replace(cp, "  action: CUSTOM\n", ""), "spec.provider: only allowed with action CUSTOM"},
		{"AP CUSTOM without rules", replace(cp, "  rules: [{to: [{operation: {paths: [/admin/*]}}]}]\n", ""), "spec.rules"},
		{"AP CUSTOM with principals", replace(cp, "rules: [{to:", "rules: [{from: [{source: {principals: [a]}}], to:"), "spec.rules[0].from[0].source.principals: not supported with action CUSTOM"},
		{"AP CUSTOM with request.auth condition", replace(cp, "rules: [{to:", "rules: [{}, {when: [{key: request.auth.principal, values: [a]}], to:"), "spec.rules[1].when[0].key"},
		{"AP from without source", replace(ap, "    - source: {namespaces", "    - {}\n    - source: {namespaces"), "spec.rules[0].from[0].source: source is required"},
		{"AP empty source", replace(ap, "{namespaces: [shop, \"prod-*\"], ipBlocks: [10.0.0.0/8, 10.1.2.3]}", "{}"), "spec.rules[0].from[0].source: a source needs"},
		{"AP to without operation", replace(ap, "    - operation:", "    - {}\n    - operation:"), "spec.rules[0].to[0].operation: operation is required"},
		{"AP empty operation", replace(ap, "operation: {hosts", "operation: {}\n    - operation: {hosts"), "spec.rules[0].to[0].operation: an operation needs"},
		{"AP wildcard inside principal", replace(ap, `"cluster.local/*"`, `"cluster.local/*/sa/c"`), "spec.rules[0].from[1].source.principals[2]"},
		{"AP wildcards at both ends", replace(ap, `"*/sa/b"`, `"*/sa/*"`), "spec.rules[0].from[1].source.principals[1]"},
		{"AP wildcard inside namespace", replace(ap, `"prod-*"`, `"prod-*-eu"`), "spec.rules[0].from[0].source.namespaces[1]"},
		{"AP empty namespace", replace(ap, "[shop, ", `["", `), "spec.rules[0].from[0].source.namespaces[0]: must not be empty"},
		{"AP wildcard inside request principal", replace(ap, `requestPrincipals: ["*"]`, `requestPrincipals: ["iss/*/sub"]`), "spec.rules[0].from[1].source.requestPrincipals[0]"},
		{"AP wildcard inside host", replace(ap, `"*.example.com"`, `"api.*.example.com"`), "spec.rules[0].to[0].operation.hosts[0]"},
		{"AP wildcard inside path", replace(ap, "/api/*", "/api/*/v1"), "spec.rules[0].to[0].operation.paths[0]"},
		{"AP relative path", replace(ap, "/exact", "exact"), "spec.rules[0].to[0].operation.paths[2]: \"exact\": a path must start with /"},
		{"AP path template", replace(ap, "/exact", `"/items/{*}"`), "spec.rules[0].to[0].operation.paths[2]: \"/items/{*}\": path templates"},
		{"AP empty method", replace(ap, "methods: [GET]", `methods: [GET, ""]`), "spec.rules[0].to[0].operation.methods[1]: must not be empty"},
		{"AP empty notMethod", replace(ap, "notMethods: [DELETE]", `notMethods: [""]`), "spec.rules[0].to[0].operation.notMethods[0]"},
		{"AP port not a number", replace(ap, `ports: ["9080"]`, `ports: ["9080", http]`), "spec.rules[0].to[0].operation.ports[1]"},
		{"AP port 0", replace(ap, `ports: ["9080"]`, `ports: ["0"]`), "spec.rules[0].to[0].operation.ports[0]: \"0\" is not a port number"},
		{"AP port out of range", replace(ap, `ports: ["9080"]`, `notPorts: ["65536"]`), "spec.rules[0].to[0].operation.notPorts[0]"},
		{"AP port as a number", replace(ap, `ports: ["9080"]`, `ports: [9080]`), `spec.rules[0].to[0].operation.ports[0]: 9080 is not a string (quote it: "9080")`},
		{"AP label value as a number", replace(ap, "app: reviews", "version: 1"), "spec.selector.matchLabels[version]: 1 is not a string"},
		{"AP bad ipBlock", replace(ap, "10.0.0.0/8", "10.0.0.0/33"), "spec.rules[0].from[0].source.ipBlocks[0]"},
		{"AP bad remoteIpBlock", replace(ap, `"2001:db8::/32"`, "proxy.example.com"), "spec.rules[0].from[1].source.remoteIpBlocks[0]"},
		{"AP serviceAccounts", replace(ap, `requestPrincipals: ["*"]`, "serviceAccounts: [shop/a]"), "spec.rules[0].from[1].source.serviceAccounts: not supported by Palisade yet; use principals"},
		{"AP notServiceAccounts only", replace(ap, `namespaces: [shop, "prod-*"], ipBlocks: [10.0.0.0/8, 10.1.2.3]`, "notServiceAccounts: [shop/a]"), "spec.rules[0].from[0].source.notServiceAccounts: not supported"},
		{"AP trustDomains", replace(ap, `namespaces: [shop, "prod-*"]`, "trustDomains: [cluster.local]"), "spec.rules[0].from[0].source.trustDomains: not supported"},
		{"AP notTrustDomains", replace(ap, `namespaces: [shop, "prod-*"]`, "notTrustDomains: [other.local]"), "spec.rules[0].from[0].source.notTrustDomains: not supported"},
		{"AP unknown condition key", replace(ap, "key: source.ip", "key: request.method"), "spec.rules[0].when[2].key: unknown key \"request.method\""},
		{"AP header key without name", replace(ap, `"request.headers[x-user]"`, "request.headers"), "spec.rules[0].when[0].key"},
		{"AP header key with two names", replace(ap, `"request.headers[x-user]"`, `"request.headers[a][b]"`), "spec.rules[0].when[0].key"},
		{"AP claim key with empty name", replace(ap, `"request.auth.claims[groups][admin]"`, `"request.auth.claims[]"`), "spec.rules[0].when[1].key"},
		{"AP claim key unclosed", replace(ap, `"request.auth.claims[groups][admin]"`, `"request.auth.claims[groups"`), "spec.rules[0].when[1].key"},
		{"AP envoy filter key", replace(ap, "key: source.ip", `key: "experimental.envoy.filters.network.mysql_proxy[db.table]"`), "spec.rules[0].when[2].key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\": experimental.envoy.filters.* keys are not supported"},
		{"AP empty condition key", replace(ap, "key: source.ip, ", ""), "spec.rules[0].when[2].key: key is required"},
		{"AP condition without values", replace(ap, "notValues: [x]", "values: []"), "spec.rules[0].when[1]: a condition needs values or notValues"},
		{"AP condition bad IP", replace(ap, "values: [10.0.0.1]", "values: [10.0.0.1, localhost]"), "spec.rules[0].when[2].values[1]"},
		{"AP condition bad port", replace(ap, `values: ["9080"]`, `notValues: ["http"]`), "spec.rules[0].when[3].notValues[0]"},

		{"RA unsupported version", replace(ra, "security.istio.io/v1\n", "security.istio.io/v1alpha1\n"), "apiVersion"},
		{"RA unknown field", replace(ra, "jwksUri:", "jwks_url:"), "jwks_url"},
		{"RA wildcard selector", replace(ra, "app: reviews", "'*': reviews"), "spec.selector.matchLabels[*]"},
		{"RA targetRef", replace(ra, "  jwtRules:", "  targetRef: {kind: Gateway, name: gw}\n  jwtRules:"), "spec.targetRef"},
		{"RA no issuer", replace(ra, "- issuer: https://issuer.example.com\n    jwksUri", "- jwksUri"), "spec.jwtRules[0].issuer: issuer is required"},
		{"RA empty audience", replace(ra, "audiences: [reviews]", `audiences: [reviews, ""]`), "spec.jwtRules[0].audiences[1]"},
		{"RA jwks and jwksUri", replace(ra, "    timeout: 5s\n", "    jwksUri: https://other.example.com/keys\n"), "spec.jwtRules[1].jwks: only one of jwks and jwksUri"},
		{"RA jwks not JSON", replace(ra, `'{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'`, "'not json'"), "spec.jwtRules[1].jwks: not a JSON Web Key Set"},
		{"RA jwks without keys", replace(ra, `'{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'`, `'{"keys": []}'`), "spec.jwtRules[1].jwks: not a JSON Web Key Set: no keys"},
		{"RA jwks a single key", replace(ra, `'{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'`, `'{"kty": "EC"}'`), "spec.jwtRules[1].jwks: not a JSON Web Key Set: no keys"},
		{"RA jwks key without kty", replace(ra, `"kty": "EC", `, ""), "spec.jwtRules[1].jwks: keys[0] is not a JSON Web Key"},
		{"RA jwksUri not http", replace(ra, "jwksUri: https://issuer.example.com/jwks.json", "jwksUri: file:///etc/jwks.json"), "spec.jwtRules[0].jwksUri"},
		{"RA jwksUri relative", replace(ra, "jwksUri: https://issuer.example.com/jwks.json", "jwksUri: /jwks.json"), "spec.jwtRules[0].jwksUri"},
		{"RA fromHeaders without name", replace(ra, "{name: x-jwt, prefix: \"Bearer \"}", "{name: x-jwt}, {prefix: \"Bearer \"}"), "spec.jwtRules[0].fromHeaders[1].name"},
		{"RA empty fromParams", replace(ra, "    audiences:", "    fromParams: [\"\"]\n    audiences:"), "spec.jwtRules[0].fromParams[0]"},
		{"RA bad claim header", replace(ra, "header: x-sub", "header: 'x sub'"), "spec.jwtRules[0].outputClaimToHeaders[0].header"},
		{"RA claim header without claim", replace(ra, ", claim: sub", ""), "spec.jwtRules[0].outputClaimToHeaders[0].claim"},
		{"RA zero timeout", replace(ra, "timeout: 5s", "timeout: 0s"), "spec.jwtRules[1].timeout"},
		{"RA unknown presence", replace(ra, "timeout: 5s", "presence: MAYBE"), "spec.jwtRules[1].presence"},
		{"RA presence REQUIRED", replace(ra, "timeout: 5s", "presence: REQUIRED"), "spec.jwtRules[1].presence: REQUIRED is not supported"},
		{"RA spaceDelimitedClaims", replace(ra, "timeout: 5s", "spaceDelimitedClaims: [scope]"), "spec.jwtRules[1].spaceDelimitedClaims: not supported"},

		{"RP unsupported version", replace(rp, "palisade.dev/v1alpha1\n", "palisade.dev/v1\n"), "use policy.palisade.dev/v1alpha1"},
		{"RP unknown field", replace(rp, "rego:", "module:"), "module"},
		{"RP no rego", "apiVersion: policy.palisade.dev/v1alpha1\nkind: RegoPolicy\nmetadata: {name: x}\nspec: {provider: opa}\n", "spec.rego: a Rego module is required"},
		{"RP empty rego", rp[:strings.Index(rp, "  rego:")] + "  rego: \"  \"\n", "spec.rego: a Rego module is required"},
		{"RP empty selector", replace(rp, "{matchLabels: {app: reviews}}", "{matchLabels: {}}"), "spec.selector.matchLabels"},
		{"RP wildcard selector", replace(rp, "app: reviews", "app: '*'"), "spec.selector.matchLabels[app]"},
		{"RP parse error", replace(rp, "default allow := false", "default allow := := false"), "spec.rego: line 3, column"},
		{"RP parse error at the end", replace(rp, "      data.palisade.config.root_namespace == \"istio-system\"\n    }\n", "      data.palisade.config.root_namespace == \"istio-system\"\n"), "spec.rego: line "},
		{"RP Rego v0 syntax", replace(rp, "allow if {", "allow {"), "spec.rego: line 5, column"},
		{"RP no package", replace(rp, "    package reviews\n", ""), "spec.rego: line 2, column 1: rego_parse_error: package expected"},
		{"RP only comments", rp[:strings.Index(rp, "  rego:")] + "  rego: \"# nothing\\n\"\n", "spec.rego: rego_parse_error: empty module"},
		{"RP compile error", replace(rp, "data.palisade.config.root_namespace ==", "x =="), "spec.rego: line 7, column 3: rego_unsafe_var_error: var x is unsafe"},
		{"RP unknown function", replace(rp, "data.palisade.config.root_namespace", "no_such_function(1)"), "spec.rego: line 7, column 3: rego_type_error: undefined function no_such_function"},
		{"RP decision not defined", replace(rp, "  provider: opa\n", "  decision: verdict\n"), "spec.decision: the module defines no rule verdict"},
		{"RP default decision not defined", replace(rp, "allow", "permit"), "spec.decision: the module defines no rule allow"},
		{"RP decision not a name", replace(rp, "  provider: opa\n", "  decision: data.x.allow\n"), "spec.decision: \"data.x.allow\" is not a rule name"},
		{"RP decision a function", replace(rp, "  provider: opa\n", "  decision: f\n", "default allow := false", "f(x) := x"), "spec.decision: f is a function"},
		{"RP decision a set", replace(rp, "default allow := false", "deny contains \"no\" if input.x", "  provider: opa\n", "  decision: deny\n"), "spec.decision: deny is a set"},

		{"DR port settings without port", replace(dr, "subsets:", "trafficPolicy: {portLevelSettings: [{}]}\n  subsets:"),
			"spec.trafficPolicy.portLevelSettings[0].port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A valid document before the bad one checks the reported index.
			data := destinationRule + "---\n" + tt.doc
			objs, diags := config.Decode("dir/f.yaml", []byte(data))
			if len(objs) != 1 {
				t.Errorf("got %d objects, want only the valid one", len(objs))
			}
			if len(diags) != 1 {
				t.Fatalf("got diagnostics %v, want one", diags)
			}
			d := diags[0]
			if d.Severity != config.SeverityError {
				t.Errorf("severity = %s, want error", d.Severity)
			}
			if d.Source != (config.Source{File: "dir/f.yaml", Index: 1}) {
				t.Errorf("source = %v, want dir/f.yaml[doc 1]", d.Source)
			}
			if !strings.Contains(d.Message, tt.want) {
				t.Errorf("message %q does not mention %q", d.Message, tt.want)
			}
			// Positions in protojson errors point into re-encoded JSON, not the file.
			if strings.Contains(d.Message, "(line ") || strings.Contains(d.Message, "\u00a0") {
				t.Errorf("message %q has protojson's position or prefix", d.Message)
			}
		})
	}
}

func TestDecodeInvalidNamesObject(t *testing.T) {
	doc := strings.Replace(serviceEntry, "number: 9080", "number: 0", 1)
	_, diags := config.Decode("f.yaml", []byte(doc))
	if len(diags) != 1 {
		t.Fatalf("got diagnostics %v, want one", diags)
	}
	want := config.Key{Kind: config.KindServiceEntry, Namespace: "shop", Name: "reviews"}
	if diags[0].Object != want {
		t.Errorf("diagnostic names %v, want %v", diags[0].Object, want)
	}
	for _, s := range []string{"f.yaml[doc 0]", "ServiceEntry shop/reviews", "spec.ports[0].number"} {
		if !strings.Contains(diags[0].String(), s) {
			t.Errorf("%q does not mention %q", diags[0].String(), s)
		}
	}
}

func TestDecodeReportsEveryProblem(t *testing.T) {
	doc := strings.NewReplacer("number: 9080", "number: 0", "protocol: HTTP", "protocol: SMTP").Replace(serviceEntry)
	_, diags := config.Decode("f.yaml", []byte(doc))
	if len(diags) != 1 {
		t.Fatalf("got diagnostics %v, want one", diags)
	}
	for _, field := range []string{"spec.ports[0].number", "spec.ports[0].protocol"} {
		if !strings.Contains(diags[0].Message, field) {
			t.Errorf("message %q does not mention %s", diags[0].Message, field)
		}
	}
}

func TestDecodeTooLarge(t *testing.T) {
	tests := map[string]string{
		"long document": destinationRule + "# " + strings.Repeat("x", 80) + "\n" +
			strings.Repeat("# "+strings.Repeat("x", 80)+"\n", config.MaxDocumentBytes/80),
		"long line": destinationRule + "# " + strings.Repeat("x", config.MaxDocumentBytes+1) + "\n",
	}
	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			objs, diags := config.Decode("f.yaml", []byte(data))
			if len(objs) != 0 {
				t.Errorf("got %d objects, want none", len(objs))
			}
			if len(diags) != 1 || !strings.Contains(diags[0].Message, "limit") {
				t.Errorf("got diagnostics %v, want one about the size limit", diags)
			}
		})
	}
}

func TestValidateUnsupportedSpec(t *testing.T) {
	err := config.Validate(config.Object{Spec: &networking.Gateway{}})
	if err == nil {
		t.Fatal("Validate accepted a Gateway spec")
	}
}

// FuzzDecode checks that no input makes Decode panic, that what it returns is
// consistent, and that it is deterministic (sources compare diagnostics between
// reloads). Seeds are in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, diags := config.Decode("f.yaml", data)
		last := -1
		for _, o := range objs {
			if o.Spec == nil || o.Kind == "" || o.Name == "" || o.Namespace == "" {
				t.Fatalf("incomplete object %v (spec %v)", o.Key, o.Spec)
			}
			if o.Source.File != "f.yaml" || o.Source.Index <= last {
				t.Fatalf("object %v has source %v after index %d", o.Key, o.Source, last)
			}
			last = o.Source.Index
			if err := config.Validate(o); err != nil {
				t.Fatalf("decoded object %v does not validate: %v", o.Key, err)
			}
		}
		for _, d := range diags {
			if d.Source.File != "f.yaml" || d.Source.Index < 0 || d.Message == "" {
				t.Fatalf("incomplete diagnostic %v", d)
			}
			if d.Severity != config.SeverityError && d.Severity != config.SeverityWarning {
				t.Fatalf("diagnostic %v has severity %q", d, d.Severity)
			}
		}
		_, again := config.Decode("f.yaml", data)
		if !slices.Equal(diags, again) {
			t.Fatalf("diagnostics differ between two decodes:\n%v\n%v", diags, again)
		}
	})
}

// A document with a line longer than the document limit is reported as too large,
// and the documents after it are still read.
func TestDecodeOverlongLineKeepsLaterDocuments(t *testing.T) {
	long := "# " + strings.Repeat("x", config.MaxDocumentBytes+10) + "\n"
	good := `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w}
spec: {address: 10.0.0.1}
`
	objs, diags := config.Decode("f.yaml", []byte(long+"---\n"+good))
	if len(diags) != 1 || diags[0].Source.Index != 0 || !strings.Contains(diags[0].Message, "larger than") {
		t.Fatalf("diagnostics = %v", diags)
	}
	if len(objs) != 1 || objs[0].Name != "w" || objs[0].Source.Index != 1 {
		t.Fatalf("objects = %+v", objs)
	}
}
