package kubesource

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

const reviewsHost = "reviews.shop.svc.cluster.local"

func virtualService(name, host, timeout string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: shop}
spec:
  hosts: [%s]
  http: [{route: [{destination: {host: %s}}], timeout: %s}]
`, name, host, host, timeout)
}

// reviews is a Service with one ready endpoint on pod r1, node n1.
func reviews() []runtime.Object {
	return []runtime.Object{
		kubeService("reviews", svcPort("http", 80, intstr.FromInt32(8080))),
		endpointSlice("reviews-a", "reviews", map[string]int32{"http": 8080}, endpoint("10.0.0.1", ptr.To(true), "r1", "n1")),
		kubePod("r1", "reviews", map[string]string{"app": "reviews", "version": "v1"}),
		kubeNode("n1", map[string]string{regionLabel: "eu", zoneLabel: "eu-1a"}),
	}
}

func service(s *mesh.Snapshot, host string) *mesh.Service {
	for _, svc := range s.Services {
		if svc.Hostname == host {
			return svc
		}
	}
	return nil
}

func virtualServiceNamed(s *mesh.Snapshot, name string) *mesh.VirtualService {
	for _, vs := range s.VirtualServices {
		if vs.Key.Name == name {
			return vs
		}
	}
	return nil
}

func timeoutOf(s *mesh.Snapshot, name string) string {
	if vs := virtualServiceNamed(s, name); vs != nil {
		return vs.Spec.Http[0].Timeout.AsDuration().String()
	}
	return ""
}

func hasDiagnostic(diags []config.Diagnostic, sev config.Severity, name, fragment string) bool {
	for _, d := range diags {
		if d.Severity == sev && d.Object.Name == name && strings.Contains(d.Message, fragment) {
			return true
		}
	}
	return false
}

func TestRunPublishesAfterSync(t *testing.T) {
	objs := append(reviews(), allCRDs()...)
	objs = append(objs, resource(t, "vs-1", virtualService("reviews", "reviews", "2s")))
	h := start(t, Config{}, objs...)
	s := h.next(t)
	select {
	case <-h.src.Synced():
	case <-time.After(timeout):
		t.Error("Synced is not closed after the first snapshot")
	}
	if s.Version != 1 || h.src.Current() != s {
		t.Errorf("first snapshot: version %d, current %p; want version 1, the snapshot %p", s.Version, h.src.Current(), s)
	}
	svc := service(s, reviewsHost)
	if svc == nil || len(svc.Endpoints) != 1 {
		t.Fatalf("first snapshot's services %v lack %s with one endpoint", s.Services, reviewsHost)
	}
	ep := svc.Endpoints[0]
	if ep.Address != "10.0.0.1" || ep.Labels["version"] != "v1" || ep.ServiceAccount != "reviews" || ep.Locality != "eu/eu-1a" || ep.PortFor(svc.Ports[0]) != 8080 {
		t.Errorf("endpoint %+v: want 10.0.0.1, version v1, service account reviews, locality eu/eu-1a, port 8080", ep)
	}
	if timeoutOf(s, "reviews") != "2s" {
		t.Errorf("first snapshot has VirtualService timeout %q, want 2s", timeoutOf(s, "reviews"))
	}
	if len(s.Diagnostics) != 0 {
		t.Errorf("unexpected diagnostics %v", s.Diagnostics)
	}
	if v := metricValue(t, h.reg, "palisade_kube_objects", "kind", "Service"); v != 1 {
		t.Errorf("Service objects metric = %v, want 1", v)
	}
	if v := metricValue(t, h.reg, "palisade_kube_crd_watched", "kind", "RegoPolicy"); v != 1 {
		t.Errorf("RegoPolicy watched metric = %v, want 1", v)
	}
}

func TestRunWithoutClients(t *testing.T) {
	if err := New(Config{}).Run(context.Background()); err == nil || !strings.Contains(err.Error(), "Config.Client") {
		t.Errorf("Run without clients: error %v, want one naming Config.Client", err)
	}
}

func TestRunFollowsServiceChanges(t *testing.T) {
	h := start(t, Config{}, reviews()...)
	h.next(t)
	ctx := context.Background()
	core := h.client.CoreV1()

	// A pod's labels and a node's locality reach the endpoint through the indexes.
	pod := kubePod("r1", "reviews", map[string]string{"app": "reviews", "version": "v2"})
	if _, err := core.Pods("shop").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.nextWhere(t, "the pod's new label", func(s *mesh.Snapshot) bool {
		return service(s, reviewsHost).Endpoints[0].Labels["version"] == "v2"
	})
	node := kubeNode("n1", map[string]string{regionLabel: "eu", zoneLabel: "eu-1b"})
	if _, err := core.Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.nextWhere(t, "the node's new zone", func(s *mesh.Snapshot) bool {
		return service(s, reviewsHost).Endpoints[0].Locality == "eu/eu-1b"
	})

	// A new not-ready endpoint is no endpoint; once ready, it is.
	slice := endpointSlice("reviews-a", "reviews", map[string]int32{"http": 8080},
		endpoint("10.0.0.1", ptr.To(true), "r1", "n1"), endpoint("10.0.0.2", ptr.To(false), "", ""), endpoint("10.0.0.3", nil, "", ""))
	if _, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := h.nextWhere(t, "endpoint 10.0.0.3", func(s *mesh.Snapshot) bool { return len(service(s, reviewsHost).Endpoints) == 2 })
	if got := service(s, reviewsHost).Endpoints[1].Address; got != "10.0.0.3" {
		t.Errorf("second endpoint %s, want 10.0.0.3 (10.0.0.2 is not ready)", got)
	}

	if err := h.client.DiscoveryV1().EndpointSlices("shop").Delete(ctx, "reviews-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.nextWhere(t, "no endpoints", func(s *mesh.Snapshot) bool { return len(service(s, reviewsHost).Endpoints) == 0 })
	if err := core.Services("shop").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.nextWhere(t, "no services", func(s *mesh.Snapshot) bool { return len(s.Services) == 0 })
	h.stop()
	if n := len(h.src.podServices) + len(h.src.nodeServices); n != 0 {
		t.Errorf("the indexes still hold %d pods and nodes of the deleted Service", n)
	}
}

func TestRunReadsKindsWhenTheirCRDAppears(t *testing.T) {
	h := start(t, Config{}, reviews()...)
	if s := h.next(t); len(s.Services) != 1 || len(s.VirtualServices) != 0 {
		t.Fatalf("first snapshot without CRDs: %d services, %d virtual services; want 1 and 0", len(s.Services), len(s.VirtualServices))
	}
	ctx := context.Background()
	crds := h.ext.ApiextensionsV1().CustomResourceDefinitions()
	h.apply(t, resource(t, "vs-1", virtualService("reviews", "reviews", "2s")))

	// Created, not yet established: not read.
	pending := crd("VirtualService", false)
	if _, err := crds.Create(ctx, pending, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the CRD event", func() bool {
		return metricValue(t, h.reg, "palisade_kube_events_total", "resource", "customresourcedefinitions") >= 1
	})
	if v := metricValue(t, h.reg, "palisade_kube_crd_watched", "kind", "VirtualService"); v != 0 {
		t.Errorf("VirtualService watched before its CRD is established: metric %v", v)
	}

	if _, err := crds.Update(ctx, crd("VirtualService", true), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := h.nextWhere(t, "the VirtualService", func(s *mesh.Snapshot) bool { return len(s.VirtualServices) == 1 })
	if timeoutOf(s, "reviews") != "2s" {
		t.Errorf("VirtualService timeout %q, want 2s", timeoutOf(s, "reviews"))
	}
	h.apply(t, resource(t, "vs-1", virtualService("reviews", "reviews", "3s")))
	h.nextWhere(t, "the edited VirtualService", func(s *mesh.Snapshot) bool { return timeoutOf(s, "reviews") == "3s" })

	// Another storage version: the kind is read again at it, and what was read at
	// the old one is served until then (never a snapshot without the object). The
	// fake keeps versions apart; the copy at v1beta1 differs to tell them apart.
	atBeta := resource(t, "vs-1", virtualService("reviews", "reviews", "4s"))
	atBeta.SetAPIVersion("networking.istio.io/v1beta1")
	if _, err := h.dynamic.Resource(kindOf("VirtualService").gvr("v1beta1")).Namespace("shop").Create(ctx, atBeta, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	upgraded := crd("VirtualService", true)
	upgraded.Spec.Versions[0].Storage, upgraded.Spec.Versions[1].Storage = true, false
	if _, err := crds.Update(ctx, upgraded, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := h.next(t); timeoutOf(s, "reviews") != "4s" {
		t.Errorf("first snapshot after the storage version changed has timeout %q, want 4s (read at v1beta1)", timeoutOf(s, "reviews"))
	}

	if err := crds.Delete(ctx, crd("VirtualService", true).Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s = h.nextWhere(t, "no VirtualService", func(s *mesh.Snapshot) bool { return len(s.VirtualServices) == 0 })
	if len(s.Services) != 1 {
		t.Errorf("after deleting the CRD: %d services, want the Service still", len(s.Services))
	}
	eventually(t, "the kind to be dropped", func() bool {
		return metricValue(t, h.reg, "palisade_kube_crd_watched", "kind", "VirtualService") == 0
	})
}

func TestRunKeepsLastGoodVersion(t *testing.T) {
	objs := append(reviews(), allCRDs()...)
	objs = append(objs, resource(t, "vs-1", virtualService("reviews", "reviews", "2s")))
	h := start(t, Config{}, objs...)
	h.next(t)

	// Invalid: still served in its last valid version, nothing new to publish.
	h.apply(t, resource(t, "vs-1", virtualService("reviews", "reviews", "soon")))
	eventually(t, "the invalid VirtualService's diagnostics", func() bool {
		d := h.src.Diagnostics()
		return hasDiagnostic(d, config.SeverityError, "reviews", "spec.http[0].timeout") &&
			hasDiagnostic(d, config.SeverityWarning, "reviews", "last valid version")
	})
	if v := h.src.Current().Version; v != 1 {
		t.Errorf("a snapshot was published for an invalid version: current is version %d", v)
	}
	if v := metricValue(t, h.reg, "palisade_kube_invalid_objects"); v != 1 {
		t.Errorf("invalid objects metric = %v, want 1", v)
	}

	// Another change publishes the last valid version with the diagnostics.
	h.apply(t, resource(t, "dr-1", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews}
`))
	s := h.nextWhere(t, "the DestinationRule", func(s *mesh.Snapshot) bool { return len(s.DestinationRules) == 1 })
	if timeoutOf(s, "reviews") != "2s" || !hasDiagnostic(s.Diagnostics, config.SeverityError, "reviews", "spec.http[0].timeout") {
		t.Errorf("with an invalid version: timeout %q, diagnostics %v; want the last valid 2s and the error", timeoutOf(s, "reviews"), s.Diagnostics)
	}

	h.apply(t, resource(t, "vs-1", virtualService("reviews", "reviews", "5s")))
	s = h.nextWhere(t, "the fixed VirtualService", func(s *mesh.Snapshot) bool { return timeoutOf(s, "reviews") == "5s" })
	if len(s.Diagnostics) != 0 {
		t.Errorf("diagnostics left after the fix: %v", s.Diagnostics)
	}

	// Broken, then deleted: gone.
	h.apply(t, resource(t, "vs-1", virtualService("reviews", "reviews", "soon")))
	eventually(t, "the error", func() bool {
		return hasDiagnostic(h.src.Diagnostics(), config.SeverityError, "reviews", "spec.http[0].timeout")
	})
	if err := h.dynamic.Resource(kindOf("VirtualService").gvr("v1")).Namespace("shop").Delete(context.Background(), "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.nextWhere(t, "no VirtualService", func(s *mesh.Snapshot) bool { return len(s.VirtualServices) == 0 })
}

func TestRunKeepsUnchangedObjects(t *testing.T) {
	objs := append(reviews(), allCRDs()...)
	objs = append(objs,
		kubeService("ratings", svcPort("http", 80, intstr.FromInt32(80))),
		resource(t, "vs-1", virtualService("reviews", "reviews", "2s")),
	)
	h := start(t, Config{}, objs...)
	first := h.next(t)

	// Another Service changes, and an EndpointSlice of reviews changes in a way
	// that makes no difference (a not ready endpoint more): the Service and the
	// VirtualService are the same model objects (mesh.BuildFrom reused them: same
	// decoded specs), the changed one is new.
	slice := endpointSlice("reviews-a", "reviews", map[string]int32{"http": 8080},
		endpoint("10.0.0.1", ptr.To(true), "r1", "n1"), endpoint("10.0.0.2", ptr.To(false), "", ""))
	if _, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(context.Background(), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the EndpointSlice's event", func() bool {
		return metricValue(t, h.reg, "palisade_kube_events_total", "resource", "endpointslices") >= 2
	})
	ratings := kubeService("ratings", svcPort("http", 80, intstr.FromInt32(81)))
	if _, err := h.client.CoreV1().Services("shop").Update(context.Background(), ratings, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	second := h.next(t)
	if service(second, reviewsHost) != service(first, reviewsHost) || virtualServiceNamed(second, "reviews") != virtualServiceNamed(first, "reviews") {
		t.Error("an unchanged Service or VirtualService was built again")
	}
	if service(second, "ratings.shop.svc.cluster.local") == service(first, "ratings.shop.svc.cluster.local") {
		t.Error("the changed Service was not built again")
	}

	// A write that does not change the spec (a label, a status) decodes the object
	// again (the fake keeps no resource version) and keeps its spec: nothing is
	// published, and the next snapshot still reuses the VirtualService.
	relabeled := resource(t, "vs-1", virtualService("reviews", "reviews", "2000ms"))
	relabeled.SetLabels(map[string]string{"team": "shop"})
	h.apply(t, relabeled)
	eventually(t, "the VirtualService's event", func() bool {
		return metricValue(t, h.reg, "palisade_kube_events_total", "resource", "virtualservices") >= 2
	})
	ratings.Spec.Ports[0].TargetPort = intstr.FromInt32(82)
	if _, err := h.client.CoreV1().Services("shop").Update(context.Background(), ratings, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	third := h.next(t)
	if third.Version != 3 || virtualServiceNamed(third, "reviews") != virtualServiceNamed(first, "reviews") {
		t.Errorf("third snapshot is version %d and reuses the VirtualService: %v; want version 3, reused",
			third.Version, virtualServiceNamed(third, "reviews") == virtualServiceNamed(first, "reviews"))
	}
}

func TestRunDebounces(t *testing.T) {
	h := start(t, Config{Debounce: 300 * time.Millisecond})
	h.next(t)
	for i := range 30 {
		svc := kubeService(fmt.Sprintf("svc-%d", i), svcPort("http", 80, intstr.FromInt32(80)))
		if _, err := h.client.CoreV1().Services("shop").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if s := h.next(t); len(s.Services) != 30 || s.Version != 2 {
		t.Errorf("after a burst of 30 new Services: version %d with %d services; want one snapshot, version 2, with all", s.Version, len(s.Services))
	}
}

func TestHandlers(t *testing.T) {
	slice := endpointSlice("reviews-a", "reviews", nil)
	podKey := types.NamespacedName{Namespace: "shop", Name: "r1"}
	svcKey := types.NamespacedName{Namespace: "shop", Name: "reviews"}
	tests := []struct {
		name   string
		record func(metav1.Object, *changes)
		same   func(old, cur any) bool
		event  func(h cache.ResourceEventHandler)
		want   func(c changes) bool
	}{
		{"deleted Service tombstone", recordService, nil,
			func(h cache.ResourceEventHandler) {
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "shop/reviews", Obj: kubeService("reviews")})
			},
			func(c changes) bool { return c.services.Has(svcKey) }},
		{"deleted EndpointSlice tombstone names its Service", recordEndpointSlice, nil,
			func(h cache.ResourceEventHandler) {
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "shop/reviews-a", Obj: slice})
			},
			func(c changes) bool { return c.services.Has(svcKey) && c.services.Len() == 1 }},
		{"EndpointSlice moved to another Service", recordEndpointSlice, nil,
			func(h cache.ResourceEventHandler) {
				h.OnUpdate(slice, endpointSlice("reviews-a", "ratings", nil))
			},
			func(c changes) bool {
				return c.services.Has(svcKey) && c.services.Has(types.NamespacedName{Namespace: "shop", Name: "ratings"})
			}},
		{"deleted Pod tombstone", recordPod, samePod,
			func(h cache.ResourceEventHandler) {
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "shop/r1", Obj: kubePod("r1", "", nil)})
			},
			func(c changes) bool { return c.pods.Has(podKey) }},
		{"Pod update the source does not read", recordPod, samePod,
			func(h cache.ResourceEventHandler) {
				old, cur := kubePod("r1", "sa", map[string]string{"a": "b"}), kubePod("r1", "sa", map[string]string{"a": "b"})
				cur.ResourceVersion = "2"
				h.OnUpdate(old, cur)
			},
			func(c changes) bool { return c.pods.Len() == 0 }},
		{"Pod label change", recordPod, samePod,
			func(h cache.ResourceEventHandler) {
				h.OnUpdate(kubePod("r1", "sa", map[string]string{"a": "b"}), kubePod("r1", "sa", map[string]string{"a": "c"}))
			},
			func(c changes) bool { return c.pods.Has(podKey) }},
		{"deleted Node tombstone", recordNode, sameLabels,
			func(h cache.ResourceEventHandler) {
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "n1", Obj: kubeNode("n1", nil)})
			},
			func(c changes) bool { return c.nodes.Has("n1") }},
		{"tombstone without object", recordService, nil,
			func(h cache.ResourceEventHandler) { h.OnDelete(cache.DeletedFinalStateUnknown{Key: "shop/reviews"}) },
			func(c changes) bool { return c.services.Len() == 0 }},
		{"other CRD", recordCRD, nil,
			func(h cache.ResourceEventHandler) { h.OnAdd(crdNamed("widgets.example.com"), false) },
			func(c changes) bool { return !c.crds }},
		{"Palisade CRD deleted", recordCRD, nil,
			func(h cache.ResourceEventHandler) {
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: "virtualservices.networking.istio.io", Obj: crd("VirtualService", true)})
			},
			func(c changes) bool { return c.crds }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := New(Config{})
			tt.event(src.handler("test", tt.same, tt.record))
			if !tt.want(src.pending) {
				t.Errorf("recorded %+v", src.pending)
			}
		})
	}
}

func crdNamed(name string) runtime.Object {
	c := crd("VirtualService", true)
	c.Name = name
	return c
}

// TestHandlersNeverBlock: with no loop to wake, events are recorded and the loop
// is woken once.
func TestHandlersNeverBlock(t *testing.T) {
	src := New(Config{})
	h := src.handler("services", nil, recordService)
	done := make(chan struct{})
	go func() {
		for i := range 10000 {
			h.OnAdd(kubeService(fmt.Sprintf("svc-%d", i)), false)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatal("event handlers blocked without a loop to receive their wake-ups")
	}
	if len(src.wake) != 1 || src.pending.services.Len() != 10000 {
		t.Errorf("%d wake-ups pending and %d services recorded; want 1 and 10000", len(src.wake), src.pending.services.Len())
	}
}

func TestConvertResource(t *testing.T) {
	k := kindOf("VirtualService")
	gvr := k.gvr("v1")
	read := func(uid, rv, timeout string) *unstructured.Unstructured {
		u := resource(t, uid, virtualService("reviews", "reviews", timeout))
		u.SetResourceVersion(rv)
		u.SetGeneration(4)
		return u
	}
	first := convertResource(nil, k, gvr, read("a", "10", "2s"))
	if first.invalid || first.served.Spec == nil || first.served.Source.File != "kubernetes:virtualservices.networking.istio.io/shop/reviews" || first.generation != 4 {
		t.Fatalf("first conversion: %+v", first)
	}
	if again := convertResource(first, k, gvr, read("a", "10", "9s")); again != first {
		t.Error("the same resource version was decoded again")
	}
	sameSpec := convertResource(first, k, gvr, read("a", "11", "2000ms"))
	if sameSpec == first || sameSpec.served.Spec != first.served.Spec || sameSpec.resourceVersion != "11" {
		t.Error("a new resource version with an equal spec did not keep the decoded spec")
	}
	changed := convertResource(sameSpec, k, gvr, read("a", "12", "3s"))
	if changed.served.Spec == first.served.Spec {
		t.Error("a changed spec kept the old one")
	}
	invalid := convertResource(changed, k, gvr, read("a", "13", "soon"))
	if !invalid.invalid || invalid.served.Spec != changed.served.Spec ||
		!hasDiagnostic(invalid.diags, config.SeverityError, "reviews", "timeout") || !hasDiagnostic(invalid.diags, config.SeverityWarning, "reviews", "last valid version") {
		t.Errorf("invalid version: %+v; want the last valid version served, an error and a warning", invalid)
	}
	recreated := convertResource(invalid, k, gvr, read("b", "14", "soon"))
	if recreated.served.Spec != nil || len(recreated.diags) != 1 {
		t.Errorf("an invalid object created again under the same name served %v with %v; want nothing, one error", recreated.served.Spec, recreated.diags)
	}
	if spec, ok := changed.served.Spec.(*networking.VirtualService); !ok || spec.Http[0].Timeout.AsDuration() != 3*time.Second {
		t.Errorf("decoded spec %v", changed.served.Spec)
	}
}

func TestServedVersion(t *testing.T) {
	deleting := crd("VirtualService", true)
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	storageNotServed := crd("VirtualService", true)
	storageNotServed.Spec.Versions[1].Served = false
	tests := []struct {
		name string
		crd  *apiextensionsv1.CustomResourceDefinition
		want string
	}{
		{"established", crd("VirtualService", true), "v1"},
		{"not established", crd("VirtualService", false), ""},
		{"being deleted", deleting, ""},
		{"storage version not served", storageNotServed, "v1beta1"},
	}
	for _, tt := range tests {
		if got := servedVersion(tt.crd); got != tt.want {
			t.Errorf("%s: served version %q, want %q", tt.name, got, tt.want)
		}
	}
}
