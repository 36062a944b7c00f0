package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/xds"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestAnalyzeExampleMeshIsClean(t *testing.T) {
	code, out, errOut := runCLI("analyze", "../../examples/mesh")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "0 errors") {
		t.Fatalf("summary missing: %s", out)
	}
}

func TestAnalyzeReportsErrorsAndExitsNonZero(t *testing.T) {
	dir := t.TempDir()
	bad := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v9}}]
`
	if err := os.WriteFile(filepath.Join(dir, "vs.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI("analyze", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"vs.yaml[doc 0]", "VirtualService default/reviews", "spec.http[0].route[0].destination.host", "unknown host reviews.default.svc.cluster.local", "1 errors"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestAnalyzeUsageErrors(t *testing.T) {
	if code, _, errOut := runCLI("analyze"); code != 2 || !strings.Contains(errOut, "expected one directory") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI("nope"); code != 2 || !strings.Contains(errOut, `unknown command "nope"`) {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestBootstrapGRPC(t *testing.T) {
	code, out, errOut := runCLI("bootstrap", "--namespace", "shop", "--labels", "app=reviews,version=v2",
		"--service-account", "reviews", "--xds-address", "10.0.0.1:15010", "--name", "reviews-1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var b struct {
		XDSServers []struct {
			ServerURI string `json:"server_uri"`
		} `json:"xds_servers"`
		Node struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
		Template string `json:"server_listener_resource_name_template"`
	}
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if b.XDSServers[0].ServerURI != "10.0.0.1:15010" || b.Node.ID != "sidecar~127.0.0.1~reviews-1.shop~shop.svc.cluster.local" {
		t.Fatalf("unexpected bootstrap: %+v", b)
	}
	md := b.Node.Metadata
	if md["NAMESPACE"] != "shop" || md["GENERATOR"] != "grpc" || md["SERVICE_ACCOUNT"] != "reviews" ||
		md["LABELS"].(map[string]any)["version"] != "v2" {
		t.Fatalf("metadata = %v", md)
	}
	if b.Template != "grpc/server?xds.resource.listening_address=%s" {
		t.Fatalf("server listener template = %q", b.Template)
	}
}

func TestBootstrapEnvoyIsValid(t *testing.T) {
	code, out, errOut := runCLI("bootstrap", "--kind", "envoy", "--namespace", "shop", "--xds-address", "palisaded.palisade-system:15010", "--delta")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	js, err := yaml.YAMLToJSON([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v", err)
	}
	if err := xds.Validate(&b); err != nil {
		t.Fatalf("invalid: %v", err)
	}
	if got := b.GetDynamicResources().GetAdsConfig().GetApiType().String(); got != "DELTA_GRPC" {
		t.Fatalf("ADS api type %s, want DELTA_GRPC", got)
	}
	if got := b.GetStaticResources().GetClusters()[0].GetType().String(); got != "STRICT_DNS" {
		t.Fatalf("xds cluster type %s, want STRICT_DNS for a host name", got)
	}
}

func TestBootstrapRejectsBadLabels(t *testing.T) {
	if code, _, errOut := runCLI("bootstrap", "--labels", "novalue"); code != 2 || !strings.Contains(errOut, `"novalue" is not k=v`) {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestBootstrapGRPCCertDir(t *testing.T) {
	code, out, errOut := runCLI("bootstrap", "--cert-dir", "/var/run/palisade/certs", "--cert-refresh", "90s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var b struct {
		Providers map[string]struct {
			Plugin string            `json:"plugin_name"`
			Config map[string]string `json:"config"`
		} `json:"certificate_providers"`
	}
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	p := b.Providers[xds.CertProviderInstance]
	want := map[string]string{
		"certificate_file":    "/var/run/palisade/certs/cert-chain.pem",
		"private_key_file":    "/var/run/palisade/certs/key.pem",
		"ca_certificate_file": "/var/run/palisade/certs/root-cert.pem",
		"refresh_interval":    "90s",
	}
	if p.Plugin != "file_watcher" || !maps.Equal(p.Config, want) {
		t.Fatalf("certificate provider %q = %+v, want file_watcher with %v", xds.CertProviderInstance, p, want)
	}
	if _, _, errOut := runCLI("bootstrap", "--help"); !strings.Contains(errOut, "--cert-dir") && !strings.Contains(errOut, "-cert-dir") {
		t.Errorf("--help does not describe --cert-dir:\n%s", errOut)
	}
	// Without --cert-dir, no certificate providers.
	_, out, _ = runCLI("bootstrap")
	if strings.Contains(out, "certificate_providers") {
		t.Errorf("certificate providers without --cert-dir:\n%s", out)
	}
}
