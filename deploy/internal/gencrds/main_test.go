package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// crdsDir is the checked-in output, relative to this package.
var crdsDir = filepath.Join("..", "..", "crds")

func TestGeneratedFilesAreUpToDate(t *testing.T) {
	files, err := generate()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(crdsDir, filepath.FromSlash(name)))
		if err != nil {
			t.Errorf("%v; run go generate ./deploy", err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/crds/%s is out of date; run go generate ./deploy", name)
		}
	}
	onDisk, err := filepath.Glob(filepath.Join(crdsDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob(filepath.Join(crdsDir, GatewayAPIDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range append(onDisk, more...) {
		rel, _ := filepath.Rel(crdsDir, path)
		if _, ok := files[filepath.ToSlash(rel)]; !ok {
			t.Errorf("deploy/crds/%s is not generated any more; run go generate ./deploy", rel)
		}
	}
}

// TestResourcesMatchTheDecoder checks the kinds here against package config, which
// decodes what the API server stores: every version served is one it reads, into the
// message the schema was generated from.
func TestResourcesMatchTheDecoder(t *testing.T) {
	specs := map[config.Kind]string{ // a small valid spec of each kind
		config.KindServiceEntry:          "{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], resolution: DNS}",
		config.KindWorkloadEntry:         "{address: 10.0.0.1}",
		config.KindVirtualService:        "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}",
		config.KindDestinationRule:       "{host: reviews}",
		config.KindPeerAuthentication:    "{mtls: {mode: STRICT}}",
		config.KindAuthorizationPolicy:   "{action: DENY, rules: [{}]}",
		config.KindRequestAuthentication: "{jwtRules: [{issuer: https://issuer.example.com}]}",
		config.KindRegoPolicy:            "{rego: \"package p\\nallow := true\\n\"}",
	}
	if len(specs) != len(resources) {
		t.Fatalf("%d resources, %d sample specs", len(resources), len(specs))
	}
	for _, r := range resources {
		spec, ok := specs[config.Kind(r.Kind)]
		if !ok {
			t.Errorf("kind %s is not one package config reads", r.Kind)
			continue
		}
		for _, v := range r.Versions {
			doc := "apiVersion: " + r.Group + "/" + v + "\nkind: " + r.Kind + "\nmetadata: {name: x, namespace: default}\nspec: " + spec + "\n"
			objs, diags := config.Decode("test.yaml", []byte(doc))
			if len(objs) != 1 || len(diags) != 0 {
				t.Errorf("package config does not read %s/%s %s: %v", r.Group, v, r.Kind, diags)
				continue
			}
			if got := proto.MessageName(objs[0].Spec); got != r.Spec.FullName() {
				t.Errorf("%s/%s %s: package config decodes the spec as %s, the CRD schema is of %s", r.Group, v, r.Kind, got, r.Spec.FullName())
			}
		}
	}
}
