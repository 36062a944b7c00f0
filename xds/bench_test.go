package xds_test

import (
	"fmt"
	"testing"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/test/meshgen"
	"github.com/palisade-mesh/palisade/xds"
)

// BenchmarkGenerate measures one proxy's full configuration for meshes of 100, 1,000
// and 10,000 services, each with a VirtualService and a DestinationRule: building the
// namespace's view and translating it, as the server does for the first proxy of a
// view after a change.
func BenchmarkGenerate(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		objs, diags := config.Decode("mesh.yaml", []byte(meshgen.Mesh(n)))
		if len(diags) > 0 {
			b.Fatalf("generated mesh has problems: %v", diags[0])
		}
		snap := mesh.Build(1, objs)
		for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
			b.Run(fmt.Sprintf("services=%d/%s", n, kind), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					res := xds.Generate(snap.ViewFor("default"), xds.Target{Kind: kind}, xds.Options{})
					if len(res.Clusters) < 3*n {
						b.Fatalf("%d clusters for %d services", len(res.Clusters), n)
					}
				}
			})
		}
	}
}

// BenchmarkValidate measures recursive validation of one proxy's full configuration,
// which the server runs on every resource of a view's first translation and on the
// changed ones after.
func BenchmarkValidate(b *testing.B) {
	objs, _ := config.Decode("mesh.yaml", []byte(meshgen.Mesh(1000)))
	res := xds.Generate(mesh.Build(1, objs).ViewFor("default"), xds.Target{Kind: mesh.KindSidecar}, xds.Options{})
	for b.Loop() {
		if err := xds.ValidateResources(res); err != nil {
			b.Fatal(err)
		}
	}
}
