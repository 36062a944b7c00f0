package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/install"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/test/kube"
)

// The checks here are those the API server makes, run offline with its own packages:
// that a CRD is acceptable, and that an object is valid against a served version.

// servedVersion is one version of a CRD as the API server checks objects against it.
type servedVersion struct {
	structural *structuralschema.Structural
	schema     validation.SchemaValidator
	cel        *cel.Validator
}

// check returns what the API server would refuse the object for, and the fields it
// would prune (drop silently, or refuse with kubectl's default strict validation).
func (v servedVersion) check(obj map[string]any) (field.ErrorList, []string) {
	errs := validation.ValidateCustomResource(nil, obj, v.schema)
	celErrs, _ := v.cel.Validate(context.Background(), nil, v.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	errs = append(errs, celErrs...)
	pruned := pruning.PruneWithOptions(runtime.DeepCopyJSON(obj), v.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	return errs, pruned
}

// loadCRDs reads the generated CRDs, requiring each to pass the API server's CRD
// validation, and returns their served versions by group, version and kind.
func loadCRDs(t *testing.T) map[schema.GroupVersionKind]servedVersion {
	t.Helper()
	scheme := runtime.NewScheme()
	install.Install(scheme)
	files, err := filepath.Glob(filepath.Join("crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in crds/: %v", err)
	}
	versions := map[schema.GroupVersionKind]servedVersion{}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var v1 apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(data, &v1); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		scheme.Default(&v1)
		var crd apiextensions.CustomResourceDefinition
		if err := scheme.Convert(&v1, &crd, nil); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &crd); len(errs) > 0 {
			t.Errorf("%s is not an acceptable CRD: %v", file, errs.ToAggregate())
			continue
		}
		for _, ver := range crd.Spec.Versions {
			crv := crd.Spec.Validation // the internal form hoists a schema all versions share
			if ver.Schema != nil {
				crv = ver.Schema
			}
			s := crv.OpenAPIV3Schema
			structural, err := structuralschema.NewStructural(s)
			if err != nil {
				t.Fatalf("%s %s: %v", file, ver.Name, err)
			}
			validator, _, err := validation.NewSchemaValidator(s)
			if err != nil {
				t.Fatalf("%s %s: %v", file, ver.Name, err)
			}
			gvk := schema.GroupVersionKind{Group: crd.Spec.Group, Version: ver.Name, Kind: crd.Spec.Names.Kind}
			versions[gvk] = servedVersion{structural, validator, cel.NewValidator(structural, true, celconfig.PerCallLimit)}
		}
	}
	return versions
}

// checkObject checks one YAML object against the CRD serving its kind.
func checkObject(t *testing.T, versions map[schema.GroupVersionKind]servedVersion, doc []byte) (field.ErrorList, []string) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		t.Fatal(err)
	}
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	gvk := schema.FromAPIVersionAndKind(apiVersion, kind)
	v, ok := versions[gvk]
	if !ok {
		t.Fatalf("no CRD serves %v", gvk)
	}
	return v.check(obj)
}

func TestCRDsAreAcceptable(t *testing.T) {
	versions := loadCRDs(t)
	// 4 networking kinds in 3 versions, 3 security kinds in 2, RegoPolicy in 1.
	if want := 4*3 + 3*2 + 1; len(versions) != want {
		t.Errorf("the CRDs serve %d kind versions, want %d", len(versions), want)
	}
}

// validDocuments returns the documents Palisade's own decoder accepts among the YAML
// files of examples/ and the fixtures of mesh/config/testdata (including the seed
// corpus of its fuzz test), by a name saying where each comes from.
func validDocuments(t *testing.T) map[string][]byte {
	t.Helper()
	root := kube.RepoRoot()
	docs := map[string][]byte{}
	for _, dir := range []string{"examples", filepath.Join("mesh", "config", "testdata")} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if seed, ok := fuzzSeed(data); ok {
				data = seed
			} else if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
				return nil
			}
			rel, _ := filepath.Rel(root, path)
			reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
			for i := 0; ; i++ {
				doc, err := reader.Read()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return nil // not YAML: a fixture of invalid input
				}
				if objs, diags := config.Decode(rel, doc); len(objs) == 1 && len(diags) == 0 {
					docs[rel+"#"+strconv.Itoa(i)] = doc
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return docs
}

// fuzzSeed returns the input of a one-argument []byte seed of a Go fuzz corpus.
func fuzzSeed(data []byte) ([]byte, bool) {
	body, ok := bytes.CutPrefix(data, []byte("go test fuzz v1\n[]byte("))
	if !ok {
		return nil, false
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimSpace(string(body)), ")"))
	return []byte(s), err == nil
}

func TestValidObjectsPassTheSchemas(t *testing.T) {
	versions := loadCRDs(t)
	docs := validDocuments(t)
	if len(docs) < 10 {
		t.Fatalf("found only %d valid documents; is the walk broken?", len(docs))
	}
	for name, doc := range docs {
		errs, pruned := checkObject(t, versions, doc)
		if len(errs) > 0 {
			t.Errorf("%s: Palisade accepts it but the CRD refuses it: %v", name, errs.ToAggregate())
		}
		if len(pruned) > 0 {
			t.Errorf("%s: Palisade reads fields the CRD drops: %v", name, pruned)
		}
	}
}

func TestMalformedObjectsAreRefused(t *testing.T) {
	versions := loadCRDs(t)
	const vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\n"
	tests := []struct {
		name      string
		doc       string
		wantError string // a substring of the errors; empty when none are wanted
		wantPrune string // the pruned field path; empty when none are wanted
	}{
		{"valid", vs + "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {attempts: 3}}]}", "", ""},
		{"missing spec", vs, "spec: Required value", ""},
		{"array for string", vs + "spec: {hosts: [reviews], http: [{timeout: [5s]}]}", "spec.http[0].timeout: Invalid value", ""},
		{"string for array", vs + "spec: {hosts: reviews}", "spec.hosts: Invalid value", ""},
		{"string for integer", vs + "spec: {hosts: [reviews], http: [{retries: {attempts: three}}]}", "spec.http[0].retries.attempts: Invalid value", ""},
		{"negative unsigned integer", vs + "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, port: {number: -1}}}]}]}", "spec.http[0].route[0].destination.port.number: Invalid value", ""},
		{"two oneof members", vs + "spec: {hosts: [reviews], http: [{match: [{uri: {exact: /a, prefix: /b}}]}]}", "spec.http[0].match[0].uri: Invalid value: at most one of exact, prefix, regex", ""},
		{"unknown enum name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: SOMETIMES}}", "spec.mtls.mode: Unsupported value: \"SOMETIMES\"", ""},
		{"null for a wrapper", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {tls: {insecureSkipVerify: null}}}", "", ""},
		{"64-bit integer as string", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r, trafficPolicy: {loadBalancer: {consistentHash: {ringHash: {minimumRingSize: \"1024\"}}}}}", "", ""},
		{"unknown field", vs + "spec: {hosts: [reviews], hostz: [x]}", "", "spec.hostz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs, pruned := checkObject(t, versions, []byte(tc.doc))
			got := errs.ToAggregate()
			switch {
			case tc.wantError == "" && got != nil:
				t.Errorf("refused: %v", got)
			case tc.wantError != "" && (got == nil || !strings.Contains(got.Error(), tc.wantError)):
				t.Errorf("errors %v, want one containing %q", got, tc.wantError)
			}
			if wantPruned := strings.Fields(tc.wantPrune); strings.Join(pruned, " ") != strings.Join(wantPruned, " ") {
				t.Errorf("pruned %v, want %v", pruned, wantPruned)
			}
		})
	}
}
