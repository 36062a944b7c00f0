package mesh_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// pa writes a PeerAuthentication: namespace-wide when selector is "", else
// selecting "k=v"; mode "" leaves mtls out; ports maps port numbers to modes.
func pa(ns, name, selector, mode string, ports map[uint32]string) string {
	var spec []string
	if selector != "" {
		k, v, _ := strings.Cut(selector, "=")
		spec = append(spec, fmt.Sprintf("selector: {matchLabels: {%s: %s}}", k, v))
	}
	if mode != "" {
		spec = append(spec, "mtls: {mode: "+mode+"}")
	}
	if len(ports) > 0 {
		var pl []string
		for p, m := range ports {
			pl = append(pl, fmt.Sprintf("%d: {mode: %s}", p, m))
		}
		spec = append(spec, "portLevelMtls: {"+strings.Join(pl, ", ")+"}")
	}
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: %s, namespace: %s}\nspec: {%s}\n---\n", name, ns, strings.Join(spec, ", "))
}

// The effective mode follows Istio's rules: PERMISSIVE by default, the most specific
// level that sets a mode wins (UNSET inherits), the first policy by name wins a tie,
// port-level modes override (UNSET: the workload's), selectors in the root
// namespace apply to nothing.
func TestPeerAuthenticationResolution(t *testing.T) {
	const root = mesh.RootNamespace
	app := map[string]string{"app": "a"}
	tests := []struct {
		name     string
		policies string
		ns       string
		labels   map[string]string
		want     string // MODE, then " PORT=MODE" for each port-level mode
	}{
		{"nothing configured", "", "ns", app, "PERMISSIVE"},
		{"mesh-wide", pa(root, "default", "", "STRICT", nil), "ns", app, "STRICT"},
		{"mesh-wide UNSET", pa(root, "default", "", "UNSET", nil), "ns", app, "PERMISSIVE"},
		{"mesh-wide without mtls", pa(root, "default", "", "", nil), "ns", app, "PERMISSIVE"},
		{"namespace overrides mesh", pa(root, "default", "", "STRICT", nil) + pa("ns", "default", "", "DISABLE", nil), "ns", app, "DISABLE"},
		{"namespace UNSET inherits mesh", pa(root, "default", "", "STRICT", nil) + pa("ns", "default", "", "UNSET", nil), "ns", app, "STRICT"},
		{"another namespace's policy", pa("other", "default", "", "STRICT", nil), "ns", app, "PERMISSIVE"},
		{"workload overrides namespace", pa("ns", "default", "", "STRICT", nil) + pa("ns", "w", "app=a", "PERMISSIVE", nil), "ns", app, "PERMISSIVE"},
		{"workload not selected", pa("ns", "default", "", "STRICT", nil) + pa("ns", "w", "app=b", "DISABLE", nil), "ns", app, "STRICT"},
		{"workload UNSET inherits namespace", pa("ns", "default", "", "DISABLE", nil) + pa("ns", "w", "app=a", "UNSET", nil), "ns", app, "DISABLE"},
		{"workload UNSET inherits mesh through namespace UNSET", pa(root, "m", "", "STRICT", nil) + pa("ns", "default", "", "", nil) + pa("ns", "w", "app=a", "", nil), "ns", app, "STRICT"},
		{"workload policy of another namespace", pa("other", "w", "app=a", "STRICT", nil), "ns", app, "PERMISSIVE"},
		{"selector in the root namespace applies to nothing", pa(root, "w", "app=a", "STRICT", nil), "ns", app, "PERMISSIVE"},
		{"selector in the root namespace, workload there", pa(root, "w", "app=a", "STRICT", nil), root, app, "PERMISSIVE"},
		{"workload in the root namespace: the mesh-wide policy", pa(root, "default", "", "DISABLE", nil), root, app, "DISABLE"},
		{"two namespace policies: the first by name", pa("ns", "b", "", "STRICT", nil) + pa("ns", "a", "", "DISABLE", nil), "ns", app, "DISABLE"},
		{"two mesh-wide policies: the first by name", pa(root, "b", "", "STRICT", nil) + pa(root, "a", "", "DISABLE", nil), "ns", app, "DISABLE"},
		{"two workload policies: the first by name", pa("ns", "b", "app=a", "STRICT", nil) + pa("ns", "a", "app=a", "DISABLE", nil), "ns", app, "DISABLE"},
		{"port-level", pa("ns", "w", "app=a", "STRICT", map[uint32]string{8080: "DISABLE"}), "ns", app, "STRICT 8080=DISABLE"},
		{"port-level UNSET takes the workload's", pa("ns", "w", "app=a", "DISABLE", map[uint32]string{8080: "UNSET"}), "ns", app, "DISABLE 8080=DISABLE"},
		{"port-level UNSET takes the inherited mode", pa("ns", "default", "", "STRICT", nil) + pa("ns", "w", "app=a", "UNSET", map[uint32]string{8080: "UNSET", 9090: "PERMISSIVE"}), "ns", app, "STRICT 8080=STRICT 9090=PERMISSIVE"},
		{"port-level of a policy that is not selected", pa("ns", "w", "app=b", "STRICT", map[uint32]string{8080: "DISABLE"}), "ns", app, "PERMISSIVE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, diags := config.Decode("t.yaml", []byte(tt.policies))
			if len(diags) > 0 {
				t.Fatalf("test input: %v", diags)
			}
			snap := mesh.Build(1, objs)
			m := snap.PeerAuthentications.ForWorkload(tt.ns, tt.labels).Effective()
			got := m.Mode.String()
			for _, p := range m.Ports() {
				got += fmt.Sprintf(" %d=%s", p, m.PerPort[p])
			}
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			if m.ModeFor(1) != m.Mode {
				t.Errorf("ModeFor a port without override = %s, want %s", m.ModeFor(1), m.Mode)
			}
		})
	}
}

func TestPeerAuthenticationConflictsAreReported(t *testing.T) {
	snap := build(t, pa("ns", "a", "", "STRICT", nil)+pa("ns", "b", "", "DISABLE", nil)+
		pa(mesh.RootNamespace, "w", "app=a", "STRICT", nil)+
		pa("ns", "w1", "app=a", "STRICT", nil)+pa("ns", "w2", "app=a", "DISABLE", nil)+
		pa("ns", "x1", "app=x", "STRICT", nil)+pa("ns", "x2", "tier=front", "DISABLE", nil)+
		pa("ns", "y1", "app=why", "STRICT", nil)+pa("ns", "y2", "tier=back", "DISABLE", nil)+
		`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: both, namespace: ns}
spec: {address: 10.0.0.1, labels: {app: why, tier: back}}
`)
	reported := map[string]string{}
	for _, d := range snap.Diagnostics {
		if d.Severity != config.SeverityWarning {
			t.Errorf("%v is not a warning", d)
		}
		reported[d.Object.Namespace+"/"+d.Object.Name] = d.Message
	}
	for _, name := range []string{"ns/b", mesh.RootNamespace + "/w", "ns/w2", "ns/y2"} {
		if reported[name] == "" {
			t.Errorf("PeerAuthentication %s is not reported; diagnostics: %v", name, snap.Diagnostics)
		}
	}
	if !strings.Contains(reported["ns/y2"], "WorkloadEntry both") {
		t.Errorf("the overlap of y1 and y2 does not name the WorkloadEntry both selects: %q", reported["ns/y2"])
	}
	for _, name := range []string{"ns/a", "ns/w1", "ns/x1", "ns/x2", "ns/y1"} {
		if msg, ok := reported[name]; ok {
			t.Errorf("PeerAuthentication %s is reported: %s", name, msg)
		}
	}
}

// Unchanged policies keep their identity from one snapshot to the next (translations
// are memoized on it); a changed one is new.
func TestBuildFromReusesUnchangedPeerAuthentications(t *testing.T) {
	a, _ := config.Decode("a.yaml", []byte(pa("ns", "a", "app=a", "STRICT", nil)))
	b, _ := config.Decode("b.yaml", []byte(pa("ns", "b", "", "STRICT", nil)))
	first := mesh.Build(1, append(a, b...))
	b2, _ := config.Decode("b.yaml", []byte(pa("ns", "b", "", "DISABLE", nil)))
	second := mesh.BuildFrom(first, 2, append(a, b2...))
	byName := func(s *mesh.Snapshot) map[string]*mesh.PeerAuthentication {
		m := map[string]*mesh.PeerAuthentication{}
		for _, p := range s.PeerAuthentications.All() {
			m[p.Key.Name] = p
		}
		return m
	}
	one, two := byName(first), byName(second)
	if one["a"] != two["a"] {
		t.Error("the unchanged policy a was rebuilt")
	}
	if one["b"] == two["b"] || two["b"].Mode != mesh.MTLSDisable {
		t.Error("the changed policy b was not rebuilt")
	}
	if got := second.PeerAuthentications.ByKey(two["a"].Key); got != two["a"] {
		t.Errorf("ByKey(%v) = %v", two["a"].Key, got)
	}
	if got := two["a"].Selector; got["app"] != "a" || len(got) != 1 {
		t.Errorf("selector = %v", got)
	}
}
