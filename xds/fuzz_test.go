package xds_test

import (
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
			for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
				res := xds.Generate(snap.ViewFor(ns), kind)
				if err := xds.ValidateResources(res); err != nil {
					t.Fatalf("valid configuration translated into invalid %s config for %s: %v", kind, ns, err)
				}
			}
		}
	})
}
