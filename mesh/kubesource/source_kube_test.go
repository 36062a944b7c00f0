package kubesource

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/test/kube"
)

// kubeClients are clients of a real API server, without client-side throttling
// (the tests create thousands of objects).
type kubeClients struct {
	client     kubernetes.Interface
	dynamic    dynamic.Interface
	extensions apiextensionsclient.Interface
}

func clientsOf(t *testing.T, c *kube.Cluster) kubeClients {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = -1, 0 // no client-side rate limit
	var k kubeClients
	var err error
	if k.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if k.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if k.extensions, err = apiextensionsclient.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return k
}

// runSource runs a Source (and a status writer, leading) against the cluster until
// the test ends; snapshots arrive on the returned channel.
func runSource(t *testing.T, k kubeClients, reg *prometheus.Registry) (*Source, <-chan *mesh.Snapshot) {
	t.Helper()
	snaps := make(chan *mesh.Snapshot, 100)
	writer := NewStatusWriter(StatusConfig{Dynamic: k.dynamic, Registerer: reg})
	src := New(Config{
		Client: k.client, Dynamic: k.dynamic, Extensions: k.extensions, Registerer: reg,
		Publish:      func(s *mesh.Snapshot) { snaps <- s },
		ReportStatus: writer.Update,
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	wg.Go(func() {
		if err := writer.Run(ctx); err != nil {
			t.Errorf("StatusWriter.Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return src, snaps
}

func waitSnapshot(t *testing.T, snaps <-chan *mesh.Snapshot, what string, ok func(*mesh.Snapshot) bool) *mesh.Snapshot {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case s := <-snaps:
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("no snapshot with %s within 30s", what)
			return nil
		}
	}
}

func create[T any](t *testing.T, create func(context.Context, T, metav1.CreateOptions) (T, error), obj T) {
	t.Helper()
	if _, err := create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestKubeSource runs the source against a real API server: palisaded starts before
// the CRDs exist, a Service with its EndpointSlice, Pod and Node is served, the
// CRDs arrive later and their objects are read, and the Reconciled condition of a
// VirtualService follows whether its destination host exists.
func TestKubeSource(t *testing.T) {
	c := kube.Start(t)
	k := clientsOf(t, c)
	core := k.client.CoreV1()
	create(t, core.Namespaces().Create, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	create(t, core.Nodes().Create, kubeNode("n1", map[string]string{regionLabel: "eu", zoneLabel: "eu-1a"}))
	pod := kubePod("r1", "default", map[string]string{"app": "reviews"})
	pod.UID = ""
	pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "reviews"}}
	create(t, core.Pods("shop").Create, pod)
	svc := kubeService("reviews", svcPort("http", 80, intstr.FromInt32(8080)))
	svc.UID, svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", "", nil // allocated by the API server
	create(t, core.Services("shop").Create, svc)
	slice := endpointSlice("reviews-a", "reviews", map[string]int32{"http": 8080}, endpoint("10.1.0.1", ptr.To(true), "r1", "n1"))
	slice.UID = ""
	create(t, k.client.DiscoveryV1().EndpointSlices("shop").Create, slice)

	reg := prometheus.NewRegistry()
	src, snaps := runSource(t, k, reg)
	s := waitSnapshot(t, snaps, "the first snapshot", func(*mesh.Snapshot) bool { return true })
	got := service(s, reviewsHost) // besides default/kubernetes
	if got == nil || len(got.Endpoints) != 1 || got.Endpoints[0].Locality != "eu/eu-1a" || got.Endpoints[0].Labels["app"] != "reviews" || len(got.Addresses) != 1 {
		t.Fatalf("first snapshot's service %s: %+v; want its cluster IP and the endpoint of r1 in eu/eu-1a", reviewsHost, got)
	}

	// The CRDs arrive after palisaded started; a VirtualService routes to a host
	// that does not exist yet.
	c.ApplyCRDs(t)
	vs := resource(t, "", virtualService("reviews", "ratings", "2s"))
	vsClient := k.dynamic.Resource(kindOf("VirtualService").gvr("v1")).Namespace("shop")
	if _, err := vsClient.Create(context.Background(), vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, snaps, "the VirtualService", func(s *mesh.Snapshot) bool { return timeoutOf(s, "reviews") == "2s" })
	reconciledIs := func(status metav1.ConditionStatus, reason, message string) func() bool {
		return func() bool {
			u, err := vsClient.Get(context.Background(), "reviews", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			c := reconciled(t, u)
			return c != nil && c.Status == status && c.Reason == reason && strings.Contains(c.Message, message) && c.ObservedGeneration == u.GetGeneration()
		}
	}
	eventuallyWithin(t, 30*time.Second, "Reconciled False for the unknown host", reconciledIs(metav1.ConditionFalse, ReasonUnresolvedReferences, "unknown host ratings.shop.svc.cluster.local"))

	ratings := kubeService("ratings", svcPort("http", 80, intstr.FromInt32(80)))
	ratings.UID, ratings.Spec.ClusterIP, ratings.Spec.ClusterIPs = "", "", nil
	create(t, core.Services("shop").Create, ratings)
	eventuallyWithin(t, 30*time.Second, "Reconciled True once the host exists", reconciledIs(metav1.ConditionTrue, ReasonAccepted, "valid"))

	// Writing the status changed the object's resource version, not its spec: the
	// writer does not write again and the source publishes nothing for it.
	writes := metricValue(t, reg, "palisade_kube_status_writes_total", "result", "ok")
	published := metricValue(t, reg, "palisade_kube_rebuilds_total", "result", "published")
	time.Sleep(time.Second)
	if w, p := metricValue(t, reg, "palisade_kube_status_writes_total", "result", "ok"), metricValue(t, reg, "palisade_kube_rebuilds_total", "result", "published"); w != writes || p != published {
		t.Errorf("without changes: status writes %v -> %v, published snapshots %v -> %v; want none", writes, w, published, p)
	}
	if v := metricValue(t, reg, "palisade_kube_status_writes_total", "result", "conflict") + metricValue(t, reg, "palisade_kube_status_writes_total", "result", "error"); v != 0 {
		t.Errorf("%v status writes failed", v)
	}

	// An invalid version (no validating webhook here to refuse it): Reconciled
	// False, and the last valid version is still served.
	patch := []byte(`{"spec":{"http":[{"route":[{"destination":{"host":"ratings"}}],"timeout":"soon"}]}}`)
	if _, err := vsClient.Patch(context.Background(), "reviews", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 30*time.Second, "Reconciled False for the invalid version", reconciledIs(metav1.ConditionFalse, ReasonInvalid, "last valid version"))
	if got := timeoutOf(src.Current(), "reviews"); got != "2s" {
		t.Errorf("with an invalid version the VirtualService's timeout is %q, want the last valid 2s", got)
	}
}

// TestKubeScale reads 1,000 Services with 5,000 pods and measures what the source
// keeps in memory: informer caches (stripped), converted objects and the snapshot.
func TestKubeScale(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 12,000 objects")
	}
	const services, podsPerService, nodes = 1000, 5, 50
	c := kube.Start(t)
	k := clientsOf(t, c)
	core := k.client.CoreV1()
	create(t, core.Namespaces().Create, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	for i := range nodes {
		n := kubeNode(fmt.Sprintf("node-%d", i), map[string]string{regionLabel: "eu", zoneLabel: fmt.Sprintf("eu-%d", i%3)})
		n.UID = ""
		create(t, core.Nodes().Create, n)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				createService(t, k, i, podsPerService, nodes)
			}
		})
	}
	for i := range services {
		work <- i
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		return
	}

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	src, snaps := runSource(t, k, prometheus.NewRegistry())
	s := waitSnapshot(t, snaps, "the first snapshot", func(*mesh.Snapshot) bool { return true })
	synced := time.Since(start)
	if len(s.Services) != services+1 || len(service(s, "svc-0.shop.svc.cluster.local").Endpoints) != podsPerService { // +1: default/kubernetes
		t.Fatalf("%d services, svc-0 with %d endpoints; want %d and %d", len(s.Services), len(service(s, "svc-0.shop.svc.cluster.local").Endpoints), services+1, podsPerService)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d services, %d pods: first snapshot after %v, %.1f MiB more heap", services, services*podsPerService, synced.Round(time.Millisecond), float64(heap)/(1<<20))
	// The source's share of palisaded's 300 MB budget.
	if heap > 100<<20 {
		t.Errorf("the source holds %.1f MiB for %d services and %d pods, more than 100 MiB", float64(heap)/(1<<20), services, services*podsPerService)
	}
	runtime.KeepAlive(src)
}

// createService creates Service i with its pods, spread over the nodes, and one
// EndpointSlice, as the Kubernetes controllers would; the pods carry what real pods
// carry that the source strips (containers, annotations).
func createService(t *testing.T, k kubeClients, i, pods, nodes int) {
	ctx := context.Background()
	name := fmt.Sprintf("svc-%d", i)
	svc := kubeService(name, svcPort("http", 80, intstr.FromString("http")), svcPort("grpc", 9090, intstr.FromInt32(9090)))
	svc.UID, svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", "", nil
	if i >= 200 { // the test API server's service IP range is a /24
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	svc.Spec.Selector = map[string]string{"app": name}
	if _, err := k.client.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Error(err)
		return
	}
	slice := endpointSlice(name+"-abcde", name, map[string]int32{"http": 8080, "grpc": 9090})
	slice.UID = ""
	for j := range pods {
		pod := kubePod(fmt.Sprintf("%s-%d", name, j), name, map[string]string{"app": name, "version": "v1", "pod-template-hash": "5d8f7c9b4"})
		pod.UID = ""
		pod.Annotations = map[string]string{"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z", "prometheus.io/scrape": "true"}
		pod.Spec.NodeName = fmt.Sprintf("node-%d", (i*pods+j)%nodes)
		pod.Spec.Containers = []corev1.Container{{
			Name: "app", Image: "registry.example.com/shop/app:1.2.3",
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "grpc", ContainerPort: 9090}},
			Env:            []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "SERVICE", Value: name}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}},
		}}
		if _, err := k.client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Error(err)
			return
		}
		address := fmt.Sprintf("10.%d.%d.%d", 1+i/250, i%250, j+1)
		slice.Endpoints = append(slice.Endpoints, endpoint(address, ptr.To(true), pod.Name, pod.Spec.NodeName))
	}
	slice.Labels[discoveryv1.LabelManagedBy] = "endpointslice-controller.k8s.io"
	if _, err := k.client.DiscoveryV1().EndpointSlices("shop").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Error(err)
	}
}

func eventuallyWithin(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
