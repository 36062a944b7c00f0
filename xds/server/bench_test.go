package server_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/test/meshgen"
	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

// decodeServices decodes services [0, n) of meshgen, svc0 sending weightV2% to v2.
func decodeServices(b *testing.B, n, weightV2 int) (svc0 []config.Object, rest []config.Object) {
	b.Helper()
	var sb strings.Builder
	for i := 1; i < n; i++ {
		sb.WriteString(meshgen.Service(i, 20) + "---\n")
	}
	rest, diags := config.Decode("mesh.yaml", []byte(sb.String()))
	first, diags0 := config.Decode("svc0.yaml", []byte(meshgen.Service(0, weightV2)))
	if len(diags)+len(diags0) > 0 {
		b.Fatal(append(diags, diags0...))
	}
	return first, rest
}

// BenchmarkServeView measures the first translation of a view: the view, the
// translation, deterministic marshalling, content hashing and validation of every
// resource — what the server does for the first proxy of a namespace.
func BenchmarkServeView(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		svc0, rest := decodeServices(b, n, 20)
		snap := mesh.Build(1, append(svc0, rest...))
		for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
			b.Run(fmt.Sprintf("services=%d/%s", n, kind), func(b *testing.B) {
				p := &mesh.Proxy{ID: "bench", Namespace: "default", Kind: kind}
				b.ReportAllocs()
				for b.Loop() {
					c := xdsserver.NewCache(xdsserver.CacheConfig{})
					c.SetSnapshot(snap)
					if _, _, err := c.Resources(p); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkServeChange measures what one configuration change costs the server for a
// view: a one-line edit of one service's VirtualService, with the file source's
// model (unchanged objects shared between versions) — re-translating, marshalling and
// validating only what the edit touched.
func BenchmarkServeChange(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		a0, rest := decodeServices(b, n, 20)
		b0, _ := decodeServices(b, 1, 50)
		snapA := mesh.Build(1, append(a0, rest...))
		snapB := mesh.BuildFrom(snapA, 2, append(b0, rest...))
		for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
			b.Run(fmt.Sprintf("services=%d/%s", n, kind), func(b *testing.B) {
				c := xdsserver.NewCache(xdsserver.CacheConfig{})
				p := &mesh.Proxy{ID: "bench", Namespace: "default", Kind: kind}
				c.SetSnapshot(snapA)
				if _, _, err := c.Resources(p); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					i++
					if i%2 == 1 {
						c.SetSnapshot(snapB)
					} else {
						c.SetSnapshot(snapA)
					}
					if _, _, err := c.Resources(p); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
