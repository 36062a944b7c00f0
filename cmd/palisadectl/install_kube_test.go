package main

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/palisade-mesh/palisade/deploy"
	"github.com/palisade-mesh/palisade/test/kube"
	"github.com/palisade-mesh/palisade/webhook"
)

// TestInstallApply installs Palisade into a real API server twice: the first run
// creates every object, the second finds nothing to change.
func TestInstallApply(t *testing.T) {
	c := kube.Start(t)
	code, out, errOut := runCLI("install", "--apply", "--kubeconfig", c.Kubeconfig, "--gateway-api")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	objs, err := deploy.Objects(deploy.Options{GatewayAPI: true, IncludePalisaded: true})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(objs) {
		t.Errorf("printed %d lines for %d objects:\n%s", len(lines), len(objs), out)
	}
	for _, want := range []string{
		"namespace/palisade-system created",
		"customresourcedefinition.apiextensions.k8s.io/virtualservices.networking.istio.io created",
		"customresourcedefinition.apiextensions.k8s.io/httproutes.gateway.networking.k8s.io created",
		"deployment.apps/palisaded -n palisade-system created",
		"mutatingwebhookconfiguration.admissionregistration.k8s.io/" + webhook.MutatingConfigurationName + " created",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	before := resourceVersions(t, c, objs)

	code, out, errOut = runCLI("install", "--apply", "--kubeconfig", c.Kubeconfig, "--gateway-api")
	if code != 0 {
		t.Fatalf("second apply: exit %d: %s%s", code, out, errOut)
	}
	if n := strings.Count(out, " unchanged\n"); n != len(objs) {
		t.Errorf("second apply left %d of %d objects unchanged:\n%s", n, len(objs), out)
	}
	after := resourceVersions(t, c, objs)
	for name, v := range before {
		if after[name] != v {
			t.Errorf("second apply changed %s (resourceVersion %s -> %s)", name, v, after[name])
		}
	}

	// An option change updates in place.
	code, out, errOut = runCLI("install", "--apply", "--kubeconfig", c.Kubeconfig, "--replicas", "3")
	if code != 0 || !strings.Contains(out, "deployment.apps/palisaded -n palisade-system configured\n") {
		t.Fatalf("third apply: exit %d: %s%s", code, out, errOut)
	}
}

// resourceVersions returns the resourceVersion of every object by kind and name,
// failing the test for an object that does not exist.
func resourceVersions(t *testing.T, c *kube.Cluster, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	versions := map[string]string{}
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%v: %v", gvk, err)
		}
		var resource dynamic.ResourceInterface = c.Dynamic.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			resource = c.Dynamic.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		got, err := resource.Get(t.Context(), obj.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Errorf("%s %s: %v", gvk.Kind, obj.GetName(), err)
			continue
		}
		versions[gvk.Kind+"/"+obj.GetName()] = got.GetResourceVersion()
	}
	return versions
}
