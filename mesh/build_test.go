package mesh_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

func build(t *testing.T, yaml string) *mesh.Snapshot {
	t.Helper()
	objs, diags := config.Decode("t.yaml", []byte(yaml))
	for _, d := range diags {
		t.Fatalf("test input: %v", d)
	}
	return mesh.Build(7, objs)
}

const services = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: grpc, protocol: grpc}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r2, namespace: shop}
spec: {address: 10.0.0.2, labels: {app: reviews, version: v2}, ports: {grpc: 8000}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other-namespace, namespace: elsewhere}
spec: {address: 10.0.0.3, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secret, namespace: shop}
spec:
  hosts: [secret.shop.svc.cluster.local]
  exportTo: ["."]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.1.1}]
`

func TestBuildServicesAndEndpoints(t *testing.T) {
	snap := build(t, services)
	if snap.Version != 7 {
		t.Errorf("version %d", snap.Version)
	}
	v := snap.ViewFor("shop")
	svc := v.Service("reviews.shop.svc.cluster.local")
	if svc == nil {
		t.Fatal("short host not qualified with the ServiceEntry's namespace")
	}
	if svc.Ports[0].Protocol != "GRPC" {
		t.Errorf("protocol %q not upper-cased", svc.Ports[0].Protocol)
	}
	var addrs []string
	for _, e := range svc.Endpoints {
		addrs = append(addrs, e.Address)
	}
	// Selected WorkloadEntries of the same namespace only, sorted by address.
	if got := strings.Join(addrs, ","); got != "10.0.0.1,10.0.0.2" {
		t.Errorf("endpoints %s", got)
	}
	if p := svc.Endpoints[1].PortFor(svc.Ports[0]); p != 8000 {
		t.Errorf("named port mapping gives %d, want 8000", p)
	}
	if p := svc.Endpoints[0].PortFor(svc.Ports[0]); p != 9080 {
		t.Errorf("unmapped port gives %d, want the service port", p)
	}
}

func TestExportToLimitsVisibility(t *testing.T) {
	snap := build(t, services)
	if snap.ViewFor("shop").Service("secret.shop.svc.cluster.local") == nil {
		t.Error("exportTo . hides a service from its own namespace")
	}
	if snap.ViewFor("web").Service("secret.shop.svc.cluster.local") != nil {
		t.Error("exportTo . service visible from another namespace")
	}
	if snap.ViewFor("web").Service("reviews.shop.svc.cluster.local") == nil {
		t.Error("a service without exportTo is not visible everywhere")
	}
}

func TestDestinationRulePrecedence(t *testing.T) {
	snap := build(t, services+`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: owner, namespace: shop}
spec: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: client, namespace: web}
spec: {host: reviews.shop.svc.cluster.local}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-default, namespace: istio-system}
spec: {host: "*.svc.cluster.local"}
`)
	svc := snap.ViewFor("shop").Service("reviews.shop.svc.cluster.local")
	for ns, want := range map[string]string{"web": "client", "shop": "owner", "other": "owner"} {
		if dr := snap.ViewFor(ns).DestinationRuleFor(svc); dr == nil || dr.Key.Name != want {
			t.Errorf("proxy in %s: got %v, want %s", ns, dr, want)
		}
	}
	secret := snap.ViewFor("shop").Service("secret.shop.svc.cluster.local")
	if dr := snap.ViewFor("shop").DestinationRuleFor(secret); dr == nil || dr.Key.Name != "mesh-default" {
		t.Errorf("root namespace wildcard rule not applied: %v", dr)
	}
}

func TestVirtualServiceSelection(t *testing.T) {
	snap := build(t, services+`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-wildcard, namespace: shop}
spec:
  hosts: ["*.shop.svc.cluster.local"]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-exact, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: c-gateway-only, namespace: shop}
spec:
  hosts: [secret]
  gateways: [ingress]
  http: [{route: [{destination: {host: secret}}]}]
`)
	v := snap.ViewFor("shop")
	if vs := v.VirtualServiceFor("reviews.shop.svc.cluster.local"); vs == nil || vs.Key.Name != "b-exact" {
		t.Errorf("exact host should win over an earlier wildcard: %v", vs)
	}
	if vs := v.VirtualServiceFor("secret.shop.svc.cluster.local"); vs == nil || vs.Key.Name != "a-wildcard" {
		t.Errorf("a gateway-only VirtualService must not bind to sidecars: %v", vs)
	}
}

func TestBuildReportsUnresolvedReferences(t *testing.T) {
	snap := build(t, services+`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v9}, weight: 50}
    - {destination: {host: nowhere}, weight: 25}
    - {destination: {host: reviews, port: {number: 1234}}, weight: 25}
    fault: {abort: {httpStatus: 503, percentage: {value: 1}}}
`)
	var msgs []string
	for _, d := range snap.Diagnostics {
		msgs = append(msgs, d.String())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		`spec.http[0].route[0].destination.subset: unknown subset "v9"`,
		"spec.http[0].route[1].destination.host: unknown host nowhere.shop.svc.cluster.local",
		"spec.http[0].route[2].destination.port: service reviews.shop.svc.cluster.local has no port 1234",
		"spec.http[0].fault is not translated yet",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("missing diagnostic %q in:\n%s", want, all)
		}
	}
}

// BuildFrom keeps the model objects whose decoded inputs are the very same, and
// makes new ones for what changed: a changed WorkloadEntry changes the services that
// select it, not the others.
func TestBuildFromReusesUnchangedObjects(t *testing.T) {
	objs, diags := config.Decode("t.yaml", []byte(services+`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
`))
	if len(diags) > 0 {
		t.Fatal(diags)
	}
	first := mesh.Build(1, objs)
	same := mesh.BuildFrom(first, 2, objs)
	if same.Services[0] != first.Services[0] || same.Services[1] != first.Services[1] || same.VirtualServices[0] != first.VirtualServices[0] {
		t.Fatal("unchanged objects were rebuilt")
	}
	// Replace WorkloadEntry r1 with a new decoded copy: reviews is rebuilt, secret kept.
	changed := slices.Clone(objs)
	for i, o := range changed {
		if o.Name == "r1" {
			again, _ := config.Decode("t.yaml", []byte("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: r1, namespace: shop}\nspec: {address: 10.0.0.9, labels: {app: reviews}}\n"))
			changed[i] = again[0]
		}
	}
	next := mesh.BuildFrom(same, 3, changed)
	reviews := func(s *mesh.Snapshot) *mesh.Service {
		return s.ViewFor("shop").Service("reviews.shop.svc.cluster.local")
	}
	secret := func(s *mesh.Snapshot) *mesh.Service {
		return s.ViewFor("shop").Service("secret.shop.svc.cluster.local")
	}
	if reviews(next) == reviews(same) || reviews(next).Endpoints[0].Address != "10.0.0.2" || reviews(next).Endpoints[1].Address != "10.0.0.9" {
		t.Errorf("reviews not rebuilt from its changed WorkloadEntry: %+v", reviews(next).Endpoints)
	}
	if secret(next) != secret(same) || next.VirtualServices[0] != same.VirtualServices[0] {
		t.Error("objects untouched by the change were rebuilt")
	}
}

// An address written as an IP and as a one-address CIDR is the same address: sidecars
// give it to one service, and the clash is reported.
func TestAddressClaimedTwiceInTwoSpellings(t *testing.T) {
	snap := build(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: shop}
spec: {hosts: [a.example.com], addresses: [240.0.0.1], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: shop}
spec: {hosts: [b.example.com], addresses: [240.0.0.1/32], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC}
`)
	if len(snap.Diagnostics) != 1 || !strings.Contains(snap.Diagnostics[0].String(), "address 240.0.0.1 port 80 is also claimed by a.example.com") {
		t.Fatalf("diagnostics = %v", snap.Diagnostics)
	}
}
