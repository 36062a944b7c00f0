package xds_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

// meshFiles is a config directory in memory whose unchanged files keep their decoded
// objects, as the file source's decode cache does.
type meshFiles struct {
	content map[string]string
	decoded map[string][]config.Object
}

func (m *meshFiles) set(name, content string) { m.content[name] = content }
func (m *meshFiles) remove(name string)       { delete(m.content, name) }

func (m *meshFiles) objects(t *testing.T) []config.Object {
	var objs []config.Object
	for name, content := range m.content {
		if prev, ok := m.decoded[name+"\x00"+content]; ok {
			objs = append(objs, prev...)
			continue
		}
		o, diags := config.Decode(name, []byte(content))
		if len(diags) > 0 {
			t.Fatalf("test config %s: %v", name, diags)
		}
		m.decoded[name+"\x00"+content] = o
		objs = append(objs, o...)
	}
	return objs
}

func serviceEntry(i int, ns string, vip bool, exportTo, location string) string {
	return serviceEntryPorts(i, ns, vip, exportTo, location, "HTTP", 0)
}

// serviceEntryPorts is serviceEntry with the protocol and target port (0: none) of
// its first port.
func serviceEntryPorts(i int, ns string, vip bool, exportTo, location, protocol string, targetPort int) string {
	addresses := ""
	if vip {
		addresses = fmt.Sprintf("\n  addresses: [240.0.0.%d]", i%3) // VIPs collide on purpose
	}
	target := ""
	if targetPort != 0 {
		target = fmt.Sprintf(", targetPort: %d", targetPort)
	}
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc%[1]d, namespace: %[2]s}
spec:
  hosts: [svc%[1]d.%[2]s.svc.cluster.local]%[3]s
  exportTo: [%[4]q]
  location: %[5]s
  ports: [{number: 9080, name: http, protocol: %[6]s%[7]s}, {number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: svc%[1]d}}
`, i, ns, addresses, exportTo, location, protocol, target)
}

// customPolicy is a CUSTOM AuthorizationPolicy of namespace ns selecting app (every
// workload of the namespace when app is "").
func customPolicy(name, ns, app string) string {
	selector := ""
	if app != "" {
		selector = "\n  selector: {matchLabels: {app: " + app + "}}"
	}
	return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec:%s
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: [/admin/*]}}]}]
`, name, ns, selector)
}

// regoPolicy is a RegoPolicy of namespace ns selecting app (every workload of the
// namespace when app is ""), with or without the provider customPolicy names.
func regoPolicy(name, ns, app string, provider bool) string {
	spec := ""
	if app != "" {
		spec += "\n  selector: {matchLabels: {app: " + app + "}}"
	}
	if provider {
		spec += "\n  provider: opa"
	}
	return fmt.Sprintf(`apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: %s, namespace: %s}
spec:%s
  rego: "package x\n\nallow := true\n"
`, name, ns, spec)
}

func workload(i int, ns, version string, tlsMode bool) string {
	labels := fmt.Sprintf("app: svc%d, version: %s", i, version)
	if tlsMode {
		labels += ", security.istio.io/tlsMode: istio"
	}
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc%[1]d-%[3]s, namespace: %[2]s}
spec: {address: 10.0.%[1]d.%[4]d, labels: {%[5]s}, serviceAccount: sa%[1]d}
`, i, ns, version, len(version), labels)
}

func destinationRule(i int, ns string, subsetLabel, tlsMode string) string {
	policy := ""
	if tlsMode != "" {
		policy = "\n  trafficPolicy: {tls: {mode: " + tlsMode + "}}"
	}
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc%[1]d, namespace: %[2]s}
spec:
  host: svc%[1]d.default.svc.cluster.local%[4]s
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: %[3]s}}]
`, i, ns, subsetLabel, policy)
}

func virtualService(i, target, weight int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc%[1]d, namespace: default}
spec:
  hosts: [svc%[1]d]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: svc%[2]d, port: {number: 9080}, subset: v2}}]
  - route:
    - {destination: {host: svc%[2]d, port: {number: 9080}, subset: v1}, weight: %[3]d}
    - {destination: {host: svc%[2]d, port: {number: 9080}, subset: v2}, weight: %[4]d}
`, i, target, weight, 100-weight)
}

// peerAuthentication is a policy of namespace ns: namespace-wide without app, else
// selecting app, with a mode and optionally one for a port.
func peerAuthentication(name, ns, app, mode string, port int, portMode string) string {
	spec := "mtls: {mode: " + mode + "}"
	if app != "" {
		spec += ", selector: {matchLabels: {app: " + app + "}}"
		if port != 0 {
			spec += fmt.Sprintf(", portLevelMtls: {%d: {mode: %s}}", port, portMode)
		}
	}
	return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: %s, namespace: %s}
spec: {%s}
`, name, ns, spec)
}

var mtlsModes = []string{"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}

// Translating with the memo of the previous version gives exactly what a full
// translation gives, through a random walk of edits of every kind a memoized
// translation depends on, for proxies of several workloads. As the server does, the
// translation for a workload whose policy (or ext_authz) changed starts from the
// memo of another of the namespace and kind.
func TestMemoMatchesFullTranslation(t *testing.T) {
	const services = 6
	files := &meshFiles{content: map[string]string{}, decoded: map[string][]config.Object{}}
	for i := range services {
		files.set(fmt.Sprintf("se%d", i), serviceEntry(i, "default", i%2 == 0, "*", "MESH_INTERNAL"))
		files.set(fmt.Sprintf("we%d-v1", i), workload(i, "default", "v1", true))
		files.set(fmt.Sprintf("we%d-v2", i), workload(i, "default", "v2", false))
		files.set(fmt.Sprintf("dr%d", i), destinationRule(i, "default", "v2", ""))
		files.set(fmt.Sprintf("vs%d", i), virtualService(i, i, 80))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	mode := func() string { return mtlsModes[rng.IntN(len(mtlsModes))] }
	edits := []func(i int){
		func(i int) { files.set(fmt.Sprintf("vs%d", i), virtualService(i, i, rng.IntN(101))) },
		func(i int) { files.set(fmt.Sprintf("vs%d", i), virtualService(i, rng.IntN(services+1), 50)) }, // may name a missing service
		func(i int) { files.remove(fmt.Sprintf("vs%d", i)) },
		func(i int) {
			files.set(fmt.Sprintf("dr%d", i), destinationRule(i, "default", []string{"v2", "v3"}[rng.IntN(2)], []string{"", "", "ISTIO_MUTUAL", "DISABLE"}[rng.IntN(4)]))
		},
		func(i int) { files.remove(fmt.Sprintf("dr%d", i)) },
		func(i int) { files.set(fmt.Sprintf("dr%d-other", i), destinationRule(i, "other", "v2", "")) },
		func(i int) { files.remove(fmt.Sprintf("dr%d-other", i)) },
		func(i int) {
			files.set(fmt.Sprintf("se%d", i), serviceEntry(i, "default", rng.IntN(2) == 0, []string{"*", "."}[rng.IntN(2)], []string{"MESH_INTERNAL", "MESH_EXTERNAL"}[rng.IntN(2)]))
		},
		func(i int) { files.remove(fmt.Sprintf("se%d", i)) },
		func(i int) { files.remove(fmt.Sprintf("we%d-v2", i)) },
		func(i int) { files.set(fmt.Sprintf("we%d-v2", i), workload(i, "default", "v2", rng.IntN(2) == 0)) },
		// PeerAuthentications: mesh-wide, namespace-wide (one of two names: a
		// second is ignored), and selecting workloads (two may select one).
		func(int) { files.set("pa-mesh", peerAuthentication("default", mesh.RootNamespace, "", mode(), 0, "")) },
		func(int) { files.remove("pa-mesh") },
		func(int) {
			files.set("pa-ns"+fmt.Sprint(rng.IntN(2)), peerAuthentication(fmt.Sprintf("ns%d", rng.IntN(2)), []string{"default", "other"}[rng.IntN(2)], "", mode(), 0, ""))
		},
		func(int) { files.remove("pa-ns" + fmt.Sprint(rng.IntN(2))) },
		func(i int) {
			files.set(fmt.Sprintf("pa-w%d", i%3), peerAuthentication(fmt.Sprintf("w%d", i%3), "default", fmt.Sprintf("svc%d", i), mode(), []int{0, 9080, 5432}[rng.IntN(3)], mode()))
		},
		func(i int) { files.remove(fmt.Sprintf("pa-w%d", i%3)) },
		// What decides whether the policy engine guards a workload, and on which
		// ports: CUSTOM AuthorizationPolicies and RegoPolicies (selecting a workload,
		// the namespace, or the whole mesh), and the protocol and target port of
		// its services' HTTP port.
		func(i int) {
			app := []string{fmt.Sprintf("svc%d", i), ""}[rng.IntN(2)]
			files.set(fmt.Sprintf("ap%d", i%2), customPolicy(fmt.Sprintf("ap%d", i%2), []string{"default", "other", mesh.RootNamespace}[rng.IntN(3)], app))
		},
		func(i int) { files.remove(fmt.Sprintf("ap%d", i%2)) },
		func(i int) {
			app := []string{fmt.Sprintf("svc%d", i), ""}[rng.IntN(2)]
			files.set(fmt.Sprintf("rego%d", i%2), regoPolicy(fmt.Sprintf("rego%d", i%2), []string{"default", "other"}[rng.IntN(2)], app, rng.IntN(2) == 0))
		},
		func(i int) { files.remove(fmt.Sprintf("rego%d", i%2)) },
		func(i int) {
			files.set(fmt.Sprintf("se%d", i), serviceEntryPorts(i, "default", i%2 == 0, "*", "MESH_INTERNAL", []string{"HTTP", "GRPC", "TCP"}[rng.IntN(3)], []int{0, 8080}[rng.IntN(2)]))
		},
	}
	// Proxies' labels and INSTANCE_IPS: those of the v1 WorkloadEntries (svc1's
	// proxy says tlsMode=istio without version), the last none.
	workloads := []struct {
		labels map[string]string
		ips    []string
	}{
		{},
		{map[string]string{"app": "svc0", "version": "v1"}, []string{"10.0.0.2"}},
		{map[string]string{"app": "svc1", mesh.TLSModeLabel: mesh.TLSModeIstio}, []string{"10.0.1.2"}},
		{map[string]string{"app": "svc2"}, []string{"10.0.2.2", "10.9.9.9"}},
	}
	// As in the server: the policy by key, so that an edited policy keeps its
	// proxies' memo, and ext_authz by labels and ports.
	type viewKey struct {
		ns       string
		kind     mesh.ProxyKind
		policy   config.Key
		tls      bool
		extAuthz xds.ExtAuthz
	}
	guarded := 0 // translations of proxies that the policy engine guards
	memos := map[viewKey]*xds.Memo{}
	var snap *mesh.Snapshot
	for step := range 300 {
		if step > 0 {
			edits[rng.IntN(len(edits))](rng.IntN(services))
		}
		snap = mesh.BuildFrom(snap, uint64(step+1), files.objects(t))
		next := map[viewKey]*xds.Memo{}
		for _, ns := range []string{"default", "other"} {
			view := snap.ViewFor(ns)
			for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
				// As the server does for a view it did not translate before: the
				// previous memo of another view of the namespace and kind, here any.
				var siblings []*xds.Memo
				for _, sk := range slices.SortedFunc(maps.Keys(memos), func(a, b viewKey) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) }) {
					if sk.ns == ns && sk.kind == kind {
						siblings = append(siblings, memos[sk])
					}
				}
				for _, w := range workloads {
					labels := w.labels
					target := xds.TargetFor(snap, &mesh.Proxy{Kind: kind, Namespace: ns, Labels: labels, IPs: w.ips})
					k := viewKey{ns: ns, kind: kind, tls: target.IstioTLSMode, extAuthz: target.ExtAuthz}
					if target.ExtAuthz.Enabled() {
						guarded++
					}
					if w := target.Policies.Workload; w != nil {
						k.policy = w.Key
					}
					if _, done := next[k]; done {
						continue // another workload with the same target
					}
					memo := memos[k]
					if memo == nil && len(siblings) > 0 {
						memo = siblings[rng.IntN(len(siblings))]
					}
					full := xds.Generate(view, target, xds.Options{})
					var inc *xds.Resources
					inc, next[k] = xds.GenerateWith(view, target, xds.Options{}, memo)
					for _, typeURL := range xds.TypeURLs {
						a, b := full.ByType(typeURL), inc.ByType(typeURL)
						if !slices.EqualFunc(a, b, func(x, y types.Resource) bool { return proto.Equal(x, y) }) {
							t.Fatalf("step %d, %s %s %v %+v: %s differ between full and memoized translation (-full +memoized; an empty diff means different bytes in an Any):\n%s",
								step, ns, kind, labels, target.ExtAuthz, typeURL, cmp.Diff(a, b, protocmp.Transform()))
						}
					}
					if step%20 == 0 { // validation is slow; the fuzz and golden tests do more of it
						if err := xds.ValidateResources(inc); err != nil {
							t.Fatalf("step %d: %v", step, err)
						}
					}
				}
			}
		}
		memos = next
	}
	if guarded < 50 {
		t.Errorf("only %d translations for proxies that the policy engine guards: the walk does not cover ext_authz", guarded)
	}
}
