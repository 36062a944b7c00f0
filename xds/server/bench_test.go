package server_test

import (
	"fmt"
	"testing"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/test/meshgen"
	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

// BenchmarkServeView measures what the server does for the first proxy of a view
// after a change: view, translation, deterministic marshalling and content hashing of
// every resource.
func BenchmarkServeView(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		objs, diags := config.Decode("mesh.yaml", []byte(meshgen.Mesh(n)))
		if len(diags) > 0 {
			b.Fatal(diags[0])
		}
		snap := mesh.Build(1, objs)
		for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
			b.Run(fmt.Sprintf("services=%d/%s", n, kind), func(b *testing.B) {
				c := xdsserver.NewCache(xdsserver.CacheConfig{})
				p := &mesh.Proxy{ID: "bench", Namespace: "default", Kind: kind}
				b.ReportAllocs()
				for b.Loop() {
					c.SetSnapshot(snap) // drops the previous translation
					if _, _, err := c.Resources(p); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
