package kubesource

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsfake "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/mesh"
)

const timeout = 10 * time.Second

// harness runs a Source against client-go fakes.
type harness struct {
	client  *kubefake.Clientset
	dynamic *dynamicfake.FakeDynamicClient
	ext     *apiextensionsfake.Clientset
	src     *Source
	reg     *prometheus.Registry
	snaps   chan *mesh.Snapshot
	// stop cancels Run and waits for it to return; then the Source's state may be
	// read.
	stop func()
}

// fakes holds the objects the fake clients start with: typed core objects,
// CustomResourceDefinitions and custom resources (unstructured).
type fakes struct {
	core      []runtime.Object
	crds      []runtime.Object
	resources []runtime.Object
}

func newFakes(objs ...runtime.Object) fakes {
	var f fakes
	for _, o := range objs {
		switch o.(type) {
		case *apiextensionsv1.CustomResourceDefinition:
			f.crds = append(f.crds, o)
		case *unstructured.Unstructured:
			f.resources = append(f.resources, o)
		default:
			f.core = append(f.core, o)
		}
	}
	return f
}

// newDynamicFake is a fake dynamic client that can list every kind the source reads.
func newDynamicFake(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	listKinds := map[schema.GroupVersionResource]string{}
	for _, k := range crdKinds {
		listKinds[k.gvr(storageVersion(k))] = string(k.kind) + "List"
		listKinds[k.gvr("v1beta1")] = string(k.kind) + "List"
	}
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds, objs...)
}

// start runs a Source with a short debounce on fakes holding objs; cfg may set
// ReportStatus and Debounce.
func start(t *testing.T, cfg Config, objs ...runtime.Object) *harness {
	t.Helper()
	h := newHarness(objs...)
	h.run(t, cfg)
	return h
}

// newHarness creates the fakes, holding objs.
func newHarness(objs ...runtime.Object) *harness {
	f := newFakes(objs...)
	return &harness{
		client:  kubefake.NewClientset(f.core...),
		dynamic: newDynamicFake(f.resources...),
		ext:     apiextensionsfake.NewClientset(f.crds...),
		reg:     prometheus.NewRegistry(),
		snaps:   make(chan *mesh.Snapshot, 100),
	}
}

// run runs a Source on the fakes until the test ends.
func (h *harness) run(t *testing.T, cfg Config) {
	t.Helper()
	cfg.Client, cfg.Dynamic, cfg.Extensions, cfg.Registerer = h.client, h.dynamic, h.ext, h.reg
	cfg.Publish = func(s *mesh.Snapshot) { h.snaps <- s }
	if cfg.Debounce == 0 {
		cfg.Debounce = 20 * time.Millisecond
	}
	h.src = New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.src.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(timeout):
				t.Error("Run did not return after its context was canceled")
			}
		})
	}
	t.Cleanup(h.stop)
}

// next returns the next published snapshot.
func (h *harness) next(t *testing.T) *mesh.Snapshot {
	t.Helper()
	select {
	case s := <-h.snaps:
		return s
	case <-time.After(timeout):
		t.Fatalf("no snapshot published within %v", timeout)
		return nil
	}
}

// nextWhere returns the first published snapshot for which ok holds, skipping
// others (events of one change may be split over two rebuilds).
func (h *harness) nextWhere(t *testing.T, what string, ok func(*mesh.Snapshot) bool) *mesh.Snapshot {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case s := <-h.snaps:
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("no snapshot with %s published within %v", what, timeout)
			return nil
		}
	}
}

// eventually waits until ok holds.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// storageVersion is the version the tests' CRDs store a kind at.
func storageVersion(k crdKind) string {
	if k.group == "policy.palisade.dev" {
		return "v1alpha1"
	}
	return "v1"
}

func kindOf(kind string) crdKind {
	for _, k := range crdKinds {
		if string(k.kind) == kind {
			return k
		}
	}
	panic("no kind " + kind)
}

// crd is the CustomResourceDefinition of a kind, established or not.
func crd(kind string, established bool) *apiextensionsv1.CustomResourceDefinition {
	k := kindOf(kind)
	c := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: k.crdName()},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: k.group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: k.resource, Kind: kind},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{
				{Name: "v1beta1", Served: true},
				{Name: storageVersion(k), Served: true, Storage: true},
			},
		},
	}
	if established {
		c.Status.Conditions = []apiextensionsv1.CustomResourceDefinitionCondition{{Type: apiextensionsv1.Established, Status: apiextensionsv1.ConditionTrue}}
	}
	return c
}

// allCRDs are the established CRDs of every kind.
func allCRDs() []runtime.Object {
	var out []runtime.Object
	for _, k := range crdKinds {
		out = append(out, crd(string(k.kind), true))
	}
	return out
}

// resource reads a custom resource from YAML, with the given UID. Its resource
// version stays empty: the fakes do not bump it on writes as an API server does,
// so the source decodes such objects every time.
func resource(t testing.TB, uid, doc string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatalf("test input: %v", err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetUID(types.UID(uid))
	return u
}

// resources splits a YAML stream into custom resources, with UIDs named after
// their kind and name.
func resources(t testing.TB, stream string) []runtime.Object {
	t.Helper()
	var out []runtime.Object
	for doc := range strings.SplitSeq(stream, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		u := resource(t, "", doc)
		u.SetUID(types.UID(fmt.Sprintf("%s-%s-%s", u.GetKind(), u.GetNamespace(), u.GetName())))
		out = append(out, u)
	}
	return out
}

// gvrOf is the resource of a custom resource at the tests' storage version.
func gvrOf(u *unstructured.Unstructured) schema.GroupVersionResource {
	k := kindOf(u.GetKind())
	return k.gvr(storageVersion(k))
}

// apply creates or updates a custom resource in the fake dynamic client.
func (h *harness) apply(t *testing.T, u *unstructured.Unstructured) {
	t.Helper()
	client := h.dynamic.Resource(gvrOf(u)).Namespace(u.GetNamespace())
	_, err := client.Update(context.Background(), u, metav1.UpdateOptions{})
	if err != nil {
		_, err = client.Create(context.Background(), u, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// get reads a custom resource from the fake dynamic client.
func (h *harness) get(t *testing.T, kind, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	k := kindOf(kind)
	u, err := h.dynamic.Resource(k.gvr(storageVersion(k))).Namespace(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// metricValue returns the value of a gauge or counter in reg with the given labels.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matchLabels(m, labels) {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return 0 // a counter vector without the labels yet
}

func matchLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}
