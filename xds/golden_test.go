package xds_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the current translators (review the diff before committing)")

// proxyNamespacesRe reads the namespaces a golden input is translated for, from a
// "# proxy-namespaces: a b" line; the default is "default".
var proxyNamespacesRe = regexp.MustCompile(`(?m)^# proxy-namespaces:(.*)$`)

// TestGolden translates every testdata/in/NAME.yaml for each proxy kind and namespace
// and compares each resource type with testdata/out/NAME.NAMESPACE.KIND.TYPE.yaml.
// The model's diagnostics are compared with testdata/out/NAME.diagnostics.txt.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			objs, diags := config.Decode(filepath.Base(in), data)
			snap := mesh.Build(1, objs)
			var diagText strings.Builder
			for _, d := range append(diags, snap.Diagnostics...) {
				fmt.Fprintln(&diagText, d)
			}
			compareGolden(t, filepath.Join("testdata/out", name+".diagnostics.txt"), []byte(diagText.String()))

			namespaces := []string{"default"}
			if m := proxyNamespacesRe.FindSubmatch(data); m != nil {
				namespaces = strings.Fields(string(m[1]))
			}
			for _, ns := range namespaces {
				for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
					res := xds.Generate(snap.ViewFor(ns), kind)
					if err := xds.ValidateResources(res); err != nil {
						t.Errorf("%s/%s: generated config does not validate: %v", ns, kind, err)
					}
					for _, typeURL := range xds.TypeURLs {
						file := fmt.Sprintf("%s.%s.%s.%s.yaml", name, ns, kind, typeName(typeURL))
						compareGolden(t, filepath.Join("testdata/out", file), resourcesYAML(t, res, typeURL))
					}
				}
			}
		})
	}
}

func typeName(typeURL string) string {
	s := typeURL[strings.LastIndex(typeURL, ".")+1:]
	return strings.ToLower(strings.TrimSuffix(s, "Configuration")) + "s"
}

// resourcesYAML renders resources as a YAML list, each through protojson so that
// Any fields show their contents.
func resourcesYAML(t *testing.T, res *xds.Resources, typeURL string) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString("[")
	for i, r := range res.ByType(typeURL) {
		if i > 0 {
			buf.WriteString(",")
		}
		b, err := protojson.MarshalOptions{}.Marshal(proto.Message(r))
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
	}
	buf.WriteString("]")
	y, err := yaml.JSONToYAML(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xds -run TestGolden -update to create it, then review it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs from the generated output (-want +got):\n%s", path, diff)
	}
}
