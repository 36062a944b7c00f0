package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-mesh/palisade/deploy"
)

func TestInstallPrintsTheDefaultManifests(t *testing.T) {
	code, out, errOut := runCLI("install")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want, err := deploy.Render(deploy.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("palisadectl install printed other manifests than deploy.Render(DefaultOptions()) (%d bytes, want %d)", len(out), len(want))
	}
}

func TestInstallFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []string // substrings of the manifests
		notWant []string
	}{
		{
			name: "namespace, image and replicas",
			args: []string{"--namespace", "mesh", "--image", "registry.example/palisaded:v9", "--replicas", "3", "--trust-domain", "example.org"},
			want: []string{"name: mesh\n", "namespace: mesh\n", "image: registry.example/palisaded:v9\n", "replicas: 3\n", "--trust-domain=example.org"},
		},
		{
			name: "failure policies",
			args: []string{"--injection-failure-policy", "Ignore", "--validation-failure-policy", "Ignore"},
			want: []string{"failurePolicy: Ignore\n  name: inject.sidecar.palisade.dev", "failurePolicy: Ignore\n  name: validate.palisade.dev"},
		},
		{
			name: "gateway API",
			args: []string{"--gateway-api"},
			want: []string{"name: httproutes.gateway.networking.k8s.io\n"},
		},
		{
			name:    "palisaded outside the cluster",
			args:    []string{"--webhook-url", "https://10.0.0.1:15017"},
			want:    []string{"url: https://10.0.0.1:15017/inject\n", "url: https://10.0.0.1:15017/validate\n", "kind: ServiceAccount\n"},
			notWant: []string{"kind: Deployment\n", "kind: Service\n", "httproutes"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(append([]string{"install"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, s := range tc.want {
				if !strings.Contains(out, s) {
					t.Errorf("manifests lack %q", s)
				}
			}
			for _, s := range tc.notWant {
				if strings.Contains(out, s) {
					t.Errorf("manifests contain %q", s)
				}
			}
		})
	}
}

func TestInstallWritesFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "palisade.yaml")
	code, out, errOut := runCLI("install", "-o", file, "--replicas", "1")
	if code != 0 || out != "" {
		t.Fatalf("exit %d, stdout %q: %s", code, out, errOut)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "replicas: 1\n") {
		t.Errorf("%s lacks the Deployment of 1 replica", file)
	}
}

func TestInstallUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--replicas", "0"}, "--replicas 0: want 1 to 1000"},
		{[]string{"--injection-failure-policy", "Sometimes"}, `injection failure policy "Sometimes": use Fail or Ignore`},
		{[]string{"--validation-failure-policy", "ignore"}, `validation failure policy "ignore"`},
		{[]string{"--namespace", "Not_A_Label"}, `namespace "Not_A_Label"`},
		{[]string{"--webhook-url", "http://10.0.0.1:15017"}, "the scheme must be https"},
		{[]string{"--kubeconfig", "kubeconfig"}, "--kubeconfig needs --apply"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(append([]string{"install"}, tc.args...)...)
			if code != 2 || !strings.Contains(errOut, tc.want) || out != "" {
				t.Errorf("exit %d, stdout %d bytes, stderr %q; want 2, nothing, and %q", code, len(out), errOut, tc.want)
			}
		})
	}
}

func TestInstallApplyReportsUnreachableCluster(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n" +
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI("install", "--apply", "--kubeconfig", kubeconfig)
	if code != 1 || !strings.Contains(errOut, "127.0.0.1:1") {
		t.Errorf("exit %d, stderr %q; want 1 and an error naming the server", code, errOut)
	}
}
