package xds_test

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

// FuzzGenerate feeds arbitrary configuration through the whole translation: whatever
// passes decoding and validation must translate without panicking into resources
// that pass recursive validation. Seeds are the golden inputs (and testdata/fuzz).
func FuzzGenerate(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/in/*.yaml")
	for _, in := range inputs {
		data, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, _ := config.Decode("fuzz.yaml", data)
		snap := mesh.Build(1, objs)
		for _, ns := range []string{"default", "team-a"} {
			view := snap.ViewFor(ns)
			for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
				// The proxy without labels, workloads selected by each policy, and
				// those of the namespace's endpoints (by their labels and address, as
				// their sidecars would say: the policy engine may guard them).
				targets := []xds.Target{xds.TargetFor(snap, &mesh.Proxy{Kind: kind, Namespace: ns})}
				for _, pa := range snap.PeerAuthentications.All() {
					if pa.Selector != nil {
						labels := maps.Clone(pa.Selector)
						labels[mesh.TLSModeLabel] = mesh.TLSModeIstio
						targets = append(targets, xds.TargetFor(snap, &mesh.Proxy{Kind: kind, Namespace: ns, Labels: labels}))
					}
				}
				for _, svc := range snap.Services {
					for _, ep := range svc.Endpoints {
						if ep.Namespace == ns && len(targets) < 16 {
							targets = append(targets, xds.TargetFor(snap, &mesh.Proxy{Kind: kind, Namespace: ns, Labels: ep.Labels, IPs: []string{ep.Address}}))
						}
					}
				}
				for _, target := range targets {
					res := xds.Generate(view, target, xds.Options{})
					if kind == mesh.KindProxyless {
						for _, port := range []int{80, 8080, 9080} {
							l, err := xds.ProxylessServerListener(target, xds.Options{}, fmt.Sprintf(xds.ServerListenerTemplate, fmt.Sprintf("10.0.0.1:%d", port)))
							if err != nil {
								t.Fatal(err)
							}
							res.Listeners = append(res.Listeners, l)
						}
					}
					if err := xds.ValidateResources(res); err != nil {
						t.Fatalf("valid configuration translated into invalid %s config for %s: %v", kind, ns, err)
					}
				}
			}
		}
	})
}
