package deploy_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-mesh/palisade/deploy"
	"github.com/palisade-mesh/palisade/test/kube"
)

// TestOnAPIServer checks the CRDs and the manifests on a real kube-apiserver (one,
// since starting it is what costs).
func TestOnAPIServer(t *testing.T) {
	c := kube.Start(t)
	t.Run("CRDs", func(t *testing.T) { testCRDs(t, c) })
	// Last: the manifests' webhooks, with no palisaded to call, refuse Istio objects.
	t.Run("RBAC", func(t *testing.T) { testRBAC(t, c) })
}

// testCRDs checks the generated CRDs: the API server accepts and serves them,
// explains their fields, admits valid objects and refuses malformed ones naming the
// field.
func testCRDs(t *testing.T, c *kube.Cluster) {
	c.ApplyCRDs(t) // fails the test unless every CRD becomes Established

	out, err := c.Kubectl(t, "", "get", "crd", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl get crd: %v\n%s", err, out)
	}
	for _, name := range []string{
		"serviceentries.networking.istio.io", "workloadentries.networking.istio.io",
		"virtualservices.networking.istio.io", "destinationrules.networking.istio.io",
		"peerauthentications.security.istio.io", "authorizationpolicies.security.istio.io",
		"requestauthentications.security.istio.io", "regopolicies.policy.palisade.dev",
	} {
		if !strings.Contains(out, "customresourcedefinition.apiextensions.k8s.io/"+name+"\n") {
			t.Errorf("CRD %s not served; kubectl get crd:\n%s", name, out)
		}
	}

	out, err = c.Kubectl(t, "", "explain", "virtualservices")
	if err != nil || !strings.Contains(out, "VirtualService routes the requests") {
		t.Errorf("kubectl explain virtualservices lacks the kind's description: %v\n%s", err, out)
	}
	out, err = c.Kubectl(t, "", "explain", "virtualservices.spec.http")
	if err != nil {
		t.Fatalf("kubectl explain: %v\n%s", err, out)
	}
	for _, field := range []string{"match", "route", "rewrite", "timeout", "retries"} {
		if !strings.Contains(out, "\n  "+field+"\t") {
			t.Errorf("kubectl explain virtualservices.spec.http does not list %s:\n%s", field, out)
		}
	}

	examples := filepath.Join(kube.RepoRoot(), "examples", "mesh")
	if out, err := c.Kubectl(t, "", "apply", "--server-side", "-f", examples); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", examples, err, out)
	}

	for _, tc := range []struct {
		name, spec, want string
	}{
		{"wrong type", "hosts: [reviews]\nhttp:\n- timeout: 5\n  route:\n  - destination: {host: reviews}", "spec.http[0].timeout"},
		{"two oneof members", "hosts: [reviews]\nhttp:\n- match:\n  - uri: {exact: /a, prefix: /b}\n  route:\n  - destination: {host: reviews}", "at most one of exact, prefix, regex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: default}\nspec:\n  " +
				strings.ReplaceAll(tc.spec, "\n", "\n  ") + "\n"
			out, err := c.Kubectl(t, vs, "apply", "--server-side", "-f", "-")
			if err == nil {
				t.Fatalf("kubectl apply of\n%s\nsucceeded, want it refused: %s", vs, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("kubectl apply refused with %q, want it to name %q", out, tc.want)
			}
		})
	}
}

// testRBAC applies the default manifests and asks the API server's authorizer what
// palisaded's service account may do: what palisaded needs, and not more.
func testRBAC(t *testing.T, c *kube.Cluster) {
	manifests, err := deploy.Render(deploy.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(t, string(manifests), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	const sa = "system:serviceaccount:" + deploy.DefaultNamespace + ":" + deploy.Name
	tests := []struct {
		args []string // kubectl auth can-i arguments
		want bool
	}{
		{[]string{"watch", "pods", "-A"}, true},
		{[]string{"list", "endpointslices.discovery.k8s.io", "-A"}, true},
		{[]string{"watch", "virtualservices.networking.istio.io", "-A"}, true},
		{[]string{"patch", "virtualservices.networking.istio.io", "--subresource=status", "-n", "default"}, true},
		{[]string{"patch", "regopolicies.policy.palisade.dev", "--subresource=status", "-n", "default"}, true},
		{[]string{"update", "virtualservices.networking.istio.io", "-n", "default"}, false},
		{[]string{"delete", "authorizationpolicies.security.istio.io", "-n", "default"}, false},
		{[]string{"create", "tokenreviews.authentication.k8s.io"}, true},
		{[]string{"patch", "mutatingwebhookconfigurations/palisade-sidecar-injector"}, true},
		{[]string{"patch", "validatingwebhookconfigurations/palisade-validator"}, true},
		{[]string{"patch", "mutatingwebhookconfigurations/someone-elses"}, false},
		{[]string{"create", "configmaps", "-n", "default"}, true},
		{[]string{"delete", "configmaps", "-n", "default"}, false},
		{[]string{"get", "secrets/palisade-ca", "-n", deploy.DefaultNamespace}, true},
		{[]string{"get", "secrets/other", "-n", deploy.DefaultNamespace}, false},
		{[]string{"get", "secrets", "-n", "default"}, false},
		{[]string{"update", "leases.coordination.k8s.io", "-n", deploy.DefaultNamespace}, true},
		{[]string{"update", "leases.coordination.k8s.io", "-n", "default"}, false},
		{[]string{"create", "pods", "-n", "default"}, false},
	}
	for _, tc := range tests {
		out, err := c.Kubectl(t, "", append([]string{"auth", "can-i", "--as", sa}, tc.args...)...)
		got := strings.HasSuffix(strings.TrimSpace(out), "\nyes") || strings.TrimSpace(out) == "yes" // after any warnings
		if got != tc.want || (err != nil && tc.want) {
			t.Errorf("can palisaded %s? %q, %v; want %t", strings.Join(tc.args, " "), strings.TrimSpace(out), err, tc.want)
		}
	}
}
