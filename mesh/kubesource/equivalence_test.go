package kubesource

import (
	"cmp"
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/filesource"
)

// comparable is the part of a snapshot both sources must agree on: everything but
// where objects were read from and the version.
type comparable struct {
	Services               []*mesh.Service
	VirtualServices        []*mesh.VirtualService
	DestinationRules       []*mesh.DestinationRule
	PeerAuthentications    []*mesh.PeerAuthentication
	AuthorizationPolicies  []*mesh.AuthorizationPolicy
	RequestAuthentications []*mesh.RequestAuthentication
	RegoPolicies           []*mesh.RegoPolicy
	Diagnostics            []config.Diagnostic // by object and message
}

func comparableOf(s *mesh.Snapshot) comparable {
	diags := slices.Clone(s.Diagnostics)
	slices.SortFunc(diags, func(a, b config.Diagnostic) int {
		return cmp.Or(strings.Compare(a.Object.String(), b.Object.String()), strings.Compare(a.Message, b.Message))
	})
	return comparable{
		Services: s.Services, VirtualServices: s.VirtualServices, DestinationRules: s.DestinationRules,
		PeerAuthentications: s.PeerAuthentications.All(), AuthorizationPolicies: s.AuthorizationPolicies,
		RequestAuthentications: s.RequestAuthentications, RegoPolicies: s.RegoPolicies, Diagnostics: diags,
	}
}

var snapshotOptions = gocmp.Options{
	protocmp.Transform(),
	cmpopts.IgnoreUnexported(mesh.Service{}),
	cmpopts.IgnoreTypes(config.Source{}),
	gocmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// decodeKubernetes reads typed Kubernetes objects from a YAML stream.
func decodeKubernetes(t *testing.T, file string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []runtime.Object
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out = append(out, obj)
	}
	return out
}

// TestSourcesAgree feeds the same mesh to both sources, as Kubernetes objects and
// as a directory of YAML files, and compares what they publish: the services with
// their endpoints, the routing rules, the policies and the diagnostics.
func TestSourcesAgree(t *testing.T) {
	const dir = "testdata/equivalence"
	snaps := make(chan *mesh.Snapshot, 1)
	fileSource := filesource.New(filesource.Config{Dir: dir + "/files", Publish: func(s *mesh.Snapshot) { snaps <- s }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := fileSource.Run(ctx); err != nil {
			t.Errorf("file source: %v", err)
		}
	}()
	fromFiles := <-snaps

	shared, err := os.ReadFile(dir + "/files/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := append(decodeKubernetes(t, dir+"/kubernetes.yaml"), allCRDs()...)
	objs = append(objs, resources(t, string(shared))...)
	fromKube := start(t, Config{}, objs...).next(t)

	want, got := comparableOf(fromFiles), comparableOf(fromKube)
	if len(got.Services) != 6 || len(got.VirtualServices) != 2 || len(got.DestinationRules) != 1 || len(got.PeerAuthentications) != 1 ||
		len(got.AuthorizationPolicies) != 1 || len(got.RequestAuthentications) != 1 || len(got.RegoPolicies) != 1 {
		t.Errorf("the Kubernetes source's snapshot lacks objects of the test: %+v", got)
	}
	if !slices.ContainsFunc(got.Diagnostics, func(d config.Diagnostic) bool { return strings.Contains(d.Message, "unknown host missing.web") }) {
		t.Errorf("the Kubernetes source's diagnostics %v lack the unknown host", got.Diagnostics)
	}
	if diff := gocmp.Diff(want, got, snapshotOptions); diff != "" {
		t.Errorf("the sources disagree (-files +kubernetes):\n%s", diff)
	}
}
