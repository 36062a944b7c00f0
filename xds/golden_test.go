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

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
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

// workloadRe reads a workload a golden input is also translated for, from lines
// "# workload: NAME k=v,k=v [IP,IP]" (the proxy's labels and INSTANCE_IPS): inbound
// configuration depends on the PeerAuthentication selecting it and, for workloads
// that the policy engine guards, on the HTTP ports of the services at those IPs.
var workloadRe = regexp.MustCompile(`(?m)^# workload: (\S+) (\S+)(?: (\S+))?$`)

// serverListenersRe reads the listening addresses of proxyless gRPC servers whose
// listeners a golden input's proxyless listeners include: "# server-listeners: IP:PORT ...".
var serverListenersRe = regexp.MustCompile(`(?m)^# server-listeners:(.*)$`)

type goldenWorkload struct {
	name   string // "" for the proxy without labels
	labels map[string]string
	ips    []string
}

// goldenWorkloads returns the workloads an input declares, after the proxy without
// labels.
func goldenWorkloads(data []byte) []goldenWorkload {
	out := []goldenWorkload{{}}
	for _, m := range workloadRe.FindAllSubmatch(data, -1) {
		w := goldenWorkload{name: string(m[1]), labels: map[string]string{}}
		for _, kv := range strings.Split(string(m[2]), ",") {
			k, v, _ := strings.Cut(kv, "=")
			w.labels[k] = v
		}
		if len(m[3]) > 0 {
			w.ips = strings.Split(string(m[3]), ",")
		}
		out = append(out, w)
	}
	return out
}

// generateFor translates a namespace's view for a workload, with the server
// listeners the input asks for added to a proxyless proxy's listeners.
func generateFor(t *testing.T, snap *mesh.Snapshot, ns string, kind mesh.ProxyKind, w goldenWorkload, data []byte) (*xds.Resources, xds.Target) {
	t.Helper()
	view := snap.ViewFor(ns)
	target := xds.TargetFor(snap, &mesh.Proxy{Kind: kind, Namespace: ns, Labels: w.labels, IPs: w.ips})
	res := xds.Generate(view, target, xds.Options{})
	if m := serverListenersRe.FindSubmatch(data); m != nil && kind == mesh.KindProxyless {
		for _, addr := range strings.Fields(string(m[1])) {
			l, err := xds.ProxylessServerListener(target, xds.Options{}, fmt.Sprintf(xds.ServerListenerTemplate, addr))
			if err != nil {
				t.Fatal(err)
			}
			res.Listeners = append(res.Listeners, l)
		}
	}
	return res, target
}

// TestGolden translates every testdata/in/NAME.yaml for each proxy kind and namespace
// and compares each resource type with testdata/out/NAME.NAMESPACE.KIND.TYPE.yaml.
// A workload NAME declared by the input (see workloadRe) gets only its listeners
// compared, with testdata/out/NAME.NAMESPACE.WORKLOAD.KIND.listeners.yaml: the other
// types must be those of the proxy without labels, except the clusters of a workload
// that the policy engine guards (the ext_authz cluster is added, and the inbound
// passthrough cluster follows the client's HTTP version), compared with
// testdata/out/NAME.NAMESPACE.WORKLOAD.KIND.clusters.yaml. The model's diagnostics
// are compared with testdata/out/NAME.diagnostics.txt.
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
					var base *xds.Resources
					for _, w := range goldenWorkloads(data) {
						res, target := generateFor(t, snap, ns, kind, w, data)
						if err := xds.ValidateResources(res); err != nil {
							t.Errorf("%s/%s/%s: generated config does not validate: %v", ns, w.name, kind, err)
						}
						if w.name == "" {
							base = res
							for _, typeURL := range xds.TypeURLs {
								file := fmt.Sprintf("%s.%s.%s.%s.yaml", name, ns, kind, typeName(typeURL))
								compareGolden(t, filepath.Join("testdata/out", file), resourcesYAML(t, res, typeURL))
							}
							continue
						}
						file := fmt.Sprintf("%s.%s.%s.%s.%s.yaml", name, ns, w.name, kind, typeName(resource.ListenerType))
						compareGolden(t, filepath.Join("testdata/out", file), resourcesYAML(t, res, resource.ListenerType))
						for _, typeURL := range xds.TypeURLs {
							if typeURL == resource.ListenerType {
								continue
							}
							if typeURL == resource.ClusterType && target.ExtAuthz.Enabled() {
								file := fmt.Sprintf("%s.%s.%s.%s.%s.yaml", name, ns, w.name, kind, typeName(typeURL))
								compareGolden(t, filepath.Join("testdata/out", file), resourcesYAML(t, res, typeURL))
								continue
							}
							if string(resourcesYAML(t, res, typeURL)) != string(resourcesYAML(t, base, typeURL)) {
								t.Errorf("%s/%s/%s: %s differ from those of the proxy without labels", ns, w.name, kind, typeName(typeURL))
							}
						}
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
