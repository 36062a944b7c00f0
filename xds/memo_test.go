package xds_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

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

func serviceEntry(i int, ns string, vip bool, exportTo string) string {
	addresses := ""
	if vip {
		addresses = fmt.Sprintf("\n  addresses: [240.0.0.%d]", i%3) // VIPs collide on purpose
	}
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc%[1]d, namespace: %[2]s}
spec:
  hosts: [svc%[1]d.%[2]s.svc.cluster.local]%[3]s
  exportTo: [%[4]q]
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: svc%[1]d}}
`, i, ns, addresses, exportTo)
}

func workload(i int, ns, version string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc%[1]d-%[3]s, namespace: %[2]s}
spec: {address: 10.0.%[1]d.%[4]d, labels: {app: svc%[1]d, version: %[3]s}}
`, i, ns, version, len(version))
}

func destinationRule(i int, ns string, subsetLabel string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc%[1]d, namespace: %[2]s}
spec:
  host: svc%[1]d.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: %[3]s}}]
`, i, ns, subsetLabel)
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

// Translating with the memo of the previous version gives exactly what a full
// translation gives, through a random walk of edits of every kind a memoized
// translation depends on.
func TestMemoMatchesFullTranslation(t *testing.T) {
	const services = 6
	files := &meshFiles{content: map[string]string{}, decoded: map[string][]config.Object{}}
	for i := range services {
		files.set(fmt.Sprintf("se%d", i), serviceEntry(i, "default", i%2 == 0, "*"))
		files.set(fmt.Sprintf("we%d-v1", i), workload(i, "default", "v1"))
		files.set(fmt.Sprintf("we%d-v2", i), workload(i, "default", "v2"))
		files.set(fmt.Sprintf("dr%d", i), destinationRule(i, "default", "v2"))
		files.set(fmt.Sprintf("vs%d", i), virtualService(i, i, 80))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	edits := []func(i int){
		func(i int) { files.set(fmt.Sprintf("vs%d", i), virtualService(i, i, rng.IntN(101))) },
		func(i int) { files.set(fmt.Sprintf("vs%d", i), virtualService(i, rng.IntN(services+1), 50)) }, // may name a missing service
		func(i int) { files.remove(fmt.Sprintf("vs%d", i)) },
		func(i int) {
			files.set(fmt.Sprintf("dr%d", i), destinationRule(i, "default", []string{"v2", "v3"}[rng.IntN(2)]))
		},
		func(i int) { files.remove(fmt.Sprintf("dr%d", i)) },
		func(i int) { files.set(fmt.Sprintf("dr%d-other", i), destinationRule(i, "other", "v2")) },
		func(i int) { files.remove(fmt.Sprintf("dr%d-other", i)) },
		func(i int) {
			files.set(fmt.Sprintf("se%d", i), serviceEntry(i, "default", rng.IntN(2) == 0, []string{"*", "."}[rng.IntN(2)]))
		},
		func(i int) { files.remove(fmt.Sprintf("se%d", i)) },
		func(i int) { files.remove(fmt.Sprintf("we%d-v2", i)) },
		func(i int) { files.set(fmt.Sprintf("we%d-v2", i), workload(i, "default", "v2")) },
	}
	type viewKey struct {
		ns   string
		kind mesh.ProxyKind
	}
	memos := map[viewKey]*xds.Memo{}
	var snap *mesh.Snapshot
	for step := range 300 {
		if step > 0 {
			edits[rng.IntN(len(edits))](rng.IntN(services))
		}
		snap = mesh.BuildFrom(snap, uint64(step+1), files.objects(t))
		for _, ns := range []string{"default", "other"} {
			for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
				k := viewKey{ns, kind}
				full := xds.Generate(snap.ViewFor(ns), kind)
				var inc *xds.Resources
				inc, memos[k] = xds.GenerateWith(snap.ViewFor(ns), kind, memos[k])
				for _, typeURL := range xds.TypeURLs {
					a, b := full.ByType(typeURL), inc.ByType(typeURL)
					if !slices.EqualFunc(a, b, func(x, y types.Resource) bool { return proto.Equal(x, y) }) {
						t.Fatalf("step %d, %s %s: %s differ between full and memoized translation", step, ns, kind, typeURL)
					}
				}
			}
		}
	}
}
