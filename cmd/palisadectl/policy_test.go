package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// userPolicy is a user's OPA-Envoy policy with a test that also evaluates the mesh
// library's decision with its own data: `policy test` must load both.
const userPolicy = `package envoy.authz

default allow := false

allow if input.attributes.request.http.method == "GET"
`

const userPolicyTest = `package envoy.authz_test

import data.envoy.authz

test_get_allowed if authz.allow with input as {"attributes": {"request": {"http": {"method": "GET"}}}}

test_post_denied if not authz.allow with input as {"attributes": {"request": {"http": {"method": "POST"}}}}

# The mesh library is loaded: a DENY policy given as data denies /admin.
test_mesh_library_denies if {
	d := data.palisade.mesh.decision with input as {
		"palisade": {"workload": {"namespace": "default", "labels": {}}},
		"attributes": {"request": {"http": {"method": "GET", "path": "/admin"}}},
	}
		with data.palisade.config as {
			"root_namespace": "istio-system",
			"authorization_policies": {"default": [{
				"metadata": {"namespace": "default", "name": "deny-admin"},
				"spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
			}]},
		}
	d.allowed == false
}
`

func writePolicyDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPolicyTestRunsUserTestsWithTheMeshLibrary(t *testing.T) {
	dir := writePolicyDir(t, map[string]string{"authz.rego": userPolicy, "authz_test.rego": userPolicyTest})
	code, out, errOut := runCLI("policy", "test", "-v", dir)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"test_get_allowed", "test_mesh_library_denies", "PASS: 3/3"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPolicyTestFailures(t *testing.T) {
	failing := strings.Replace(userPolicyTest, `d.allowed == false`, `d.allowed == true`, 1)
	dir := writePolicyDir(t, map[string]string{"authz.rego": userPolicy, "authz_test.rego": failing})
	if code, out, _ := runCLI("policy", "test", dir); code != 1 || !strings.Contains(out, "FAIL: 1/3") {
		t.Errorf("a failing test: exit %d, want 1\n%s", code, out)
	}
	empty := writePolicyDir(t, map[string]string{"authz.rego": userPolicy})
	if code, _, _ := runCLI("policy", "test", empty); code != 1 {
		t.Errorf("a bundle without tests: exit %d, want 1", code)
	}
	broken := writePolicyDir(t, map[string]string{"authz.rego": "package x\n\nallow if {\n"})
	if code, _, errOut := runCLI("policy", "test", broken); code != 1 || !strings.Contains(errOut, "authz.rego:") {
		t.Errorf("a broken module: exit %d, want 1 naming the file\n%s", code, errOut)
	}
	if code, _, _ := runCLI("policy", "test"); code != 2 {
		t.Errorf("no directory: exit %d, want 2", code)
	}
}
