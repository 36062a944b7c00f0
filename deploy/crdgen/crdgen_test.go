package crdgen

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	_ "google.golang.org/protobuf/types/known/anypb"
	_ "google.golang.org/protobuf/types/known/durationpb"
	_ "google.golang.org/protobuf/types/known/structpb"
	_ "google.golang.org/protobuf/types/known/timestamppb"
	_ "google.golang.org/protobuf/types/known/wrapperspb"
)

// testFile declares a message with a field of every kind the mapping handles.
const testFile = `
name: "crdgen_test.proto" package: "crdgen.test" syntax: "proto3"
dependency: ["google/protobuf/any.proto", "google/protobuf/duration.proto", "google/protobuf/struct.proto",
             "google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"]
enum_type { name: "Mode" value { name: "MODE_UNSET" number: 0 } value { name: "STRICT" number: 1 } }
message_type {
  name: "Node"
  field { name: "name" number: 1 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "name" }
  field { name: "child" number: 2 type: TYPE_MESSAGE type_name: ".crdgen.test.Node" label: LABEL_OPTIONAL json_name: "child" }
}
message_type {
  name: "All"
  field { name: "flag" number: 1 type: TYPE_BOOL label: LABEL_OPTIONAL json_name: "flag" }
  field { name: "blob" number: 2 type: TYPE_BYTES label: LABEL_OPTIONAL json_name: "blob" }
  field { name: "small" number: 3 type: TYPE_SINT32 label: LABEL_OPTIONAL json_name: "small" }
  field { name: "port" number: 4 type: TYPE_UINT32 label: LABEL_OPTIONAL json_name: "port" }
  field { name: "big" number: 5 type: TYPE_INT64 label: LABEL_OPTIONAL json_name: "big" }
  field { name: "ratio" number: 6 type: TYPE_DOUBLE label: LABEL_OPTIONAL json_name: "ratio" }
  field { name: "mode" number: 7 type: TYPE_ENUM type_name: ".crdgen.test.Mode" label: LABEL_OPTIONAL json_name: "mode" }
  field { name: "match_labels" number: 8 type: TYPE_MESSAGE type_name: ".crdgen.test.All.MatchLabelsEntry" label: LABEL_REPEATED json_name: "matchLabels" }
  field { name: "hosts" number: 9 type: TYPE_STRING label: LABEL_REPEATED json_name: "hosts" }
  field { name: "timeout" number: 10 type: TYPE_MESSAGE type_name: ".google.protobuf.Duration" label: LABEL_OPTIONAL json_name: "timeout" }
  field { name: "at" number: 11 type: TYPE_MESSAGE type_name: ".google.protobuf.Timestamp" label: LABEL_OPTIONAL json_name: "at" }
  field { name: "enabled" number: 12 type: TYPE_MESSAGE type_name: ".google.protobuf.BoolValue" label: LABEL_OPTIONAL json_name: "enabled" }
  field { name: "limit" number: 13 type: TYPE_MESSAGE type_name: ".google.protobuf.UInt32Value" label: LABEL_OPTIONAL json_name: "limit" }
  field { name: "settings" number: 14 type: TYPE_MESSAGE type_name: ".google.protobuf.Struct" label: LABEL_OPTIONAL json_name: "settings" }
  field { name: "value" number: 15 type: TYPE_MESSAGE type_name: ".google.protobuf.Value" label: LABEL_OPTIONAL json_name: "value" }
  field { name: "values" number: 16 type: TYPE_MESSAGE type_name: ".google.protobuf.ListValue" label: LABEL_OPTIONAL json_name: "values" }
  field { name: "extension" number: 17 type: TYPE_MESSAGE type_name: ".google.protobuf.Any" label: LABEL_OPTIONAL json_name: "extension" }
  field { name: "tree" number: 18 type: TYPE_MESSAGE type_name: ".crdgen.test.Node" label: LABEL_OPTIONAL json_name: "tree" }
  field { name: "nodes" number: 19 type: TYPE_MESSAGE type_name: ".crdgen.test.All.NodesEntry" label: LABEL_REPEATED json_name: "nodes" }
  field { name: "exact" number: 20 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "exact" oneof_index: 0 }
  field { name: "namespace" number: 21 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "namespace" oneof_index: 0 }
  field { name: "note" number: 22 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "note" oneof_index: 2 proto3_optional: true }
  field { name: "only" number: 23 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "only" oneof_index: 1 }
  nested_type {
    name: "MatchLabelsEntry" options { map_entry: true }
    field { name: "key" number: 1 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "key" }
    field { name: "value" number: 2 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "value" }
  }
  nested_type {
    name: "NodesEntry" options { map_entry: true }
    field { name: "key" number: 1 type: TYPE_STRING label: LABEL_OPTIONAL json_name: "key" }
    field { name: "value" number: 2 type: TYPE_MESSAGE type_name: ".crdgen.test.Node" label: LABEL_OPTIONAL json_name: "value" }
  }
  oneof_decl { name: "match" }
  oneof_decl { name: "single" }
  oneof_decl { name: "_note" }
}
`

func testMessage(t *testing.T, name protoreflect.Name) protoreflect.MessageDescriptor {
	t.Helper()
	var fdp descriptorpb.FileDescriptorProto
	if err := prototext.Unmarshal([]byte(testFile), &fdp); err != nil {
		t.Fatal(err)
	}
	fd, err := protodesc.NewFile(&fdp, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().ByName(name)
}

func TestSchemaFollowsProtoJSON(t *testing.T) {
	s, err := Schema(testMessage(t, "All"))
	if err != nil {
		t.Fatal(err)
	}
	str := apiextensionsv1.JSONSchemaProps{Type: "string"}
	preserve := ptr(true)
	node := apiextensionsv1.JSONSchemaProps{Type: "object", Properties: map[string]apiextensionsv1.JSONSchemaProps{
		"name": str,
		"child": {
			Type:                   "object",
			Description:            "A nested crdgen.test.Node; recursive, so its fields are not checked here.",
			XPreserveUnknownFields: preserve,
		},
	}}
	want := map[string]apiextensionsv1.JSONSchemaProps{
		"flag":        {Type: "boolean"},
		"blob":        {Type: "string", Format: "byte"},
		"small":       {Type: "integer", Format: "int32"},
		"port":        {Type: "integer", Minimum: ptr(0.0), Maximum: ptr(4294967295.0)},
		"big":         {XIntOrString: true},
		"ratio":       {Type: "number"},
		"mode":        {Type: "string", Enum: []apiextensionsv1.JSON{{Raw: []byte(`"MODE_UNSET"`)}, {Raw: []byte(`"STRICT"`)}}},
		"matchLabels": {Type: "object", AdditionalProperties: &apiextensionsv1.JSONSchemaPropsOrBool{Allows: true, Schema: &str}},
		"hosts":       {Type: "array", Items: &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &str}},
		"timeout":     {Type: "string", Description: `A duration such as "1.5s".`},
		"at":          {Type: "string", Format: "date-time"},
		"enabled":     {Type: "boolean", Nullable: true},
		"limit":       {Type: "integer", Minimum: ptr(0.0), Maximum: ptr(4294967295.0), Nullable: true},
		"settings":    {Type: "object", XPreserveUnknownFields: preserve},
		"value":       {XPreserveUnknownFields: preserve},
		"values":      {Type: "array", Items: &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &apiextensionsv1.JSONSchemaProps{XPreserveUnknownFields: preserve}}},
		"extension":   {Type: "object", XPreserveUnknownFields: preserve},
		"tree":        node,
		"nodes":       {Type: "object", AdditionalProperties: &apiextensionsv1.JSONSchemaPropsOrBool{Allows: true, Schema: &node}},
		"exact":       str,
		"namespace":   str,
		"note":        str,
		"only":        str,
	}
	if diff := cmp.Diff(want, s.Properties); diff != "" {
		t.Errorf("properties (-want +got):\n%s", diff)
	}
	// Only the real oneof with two members needs a rule; "namespace" is a CEL
	// keyword, escaped as the API server does.
	wantRules := apiextensionsv1.ValidationRules{{
		Rule:    "(has(self.exact) ? 1 : 0) + (has(self.__namespace__) ? 1 : 0) <= 1",
		Message: "at most one of exact, namespace",
	}}
	if diff := cmp.Diff(wantRules, s.XValidations); diff != "" {
		t.Errorf("validation rules (-want +got):\n%s", diff)
	}
}

func TestCRD(t *testing.T) {
	crd, err := CRD(Resource{
		Group: "example.dev", Kind: "Widget", Plural: "widgets",
		Versions: []string{"v1", "v1beta1"}, StorageVersion: "v1",
		ShortNames: []string{"wd"}, Categories: []string{"examples"},
		Description: "Widget is an example.",
		Spec:        testMessage(t, "Node"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if crd.Name != "widgets.example.dev" || crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
		t.Errorf("name %s, scope %s; want widgets.example.dev, Namespaced", crd.Name, crd.Spec.Scope)
	}
	wantNames := apiextensionsv1.CustomResourceDefinitionNames{
		Kind: "Widget", ListKind: "WidgetList", Plural: "widgets", Singular: "widget",
		ShortNames: []string{"wd"}, Categories: []string{"examples"},
	}
	if diff := cmp.Diff(wantNames, crd.Spec.Names); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if len(crd.Spec.Versions) != 2 {
		t.Fatalf("%d versions, want 2", len(crd.Spec.Versions))
	}
	for i, v := range crd.Spec.Versions {
		if !v.Served || v.Storage != (i == 0) {
			t.Errorf("version %s: served %t, storage %t", v.Name, v.Served, v.Storage)
		}
		if v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("version %s has no status subresource", v.Name)
		}
		if len(v.AdditionalPrinterColumns) != 1 || v.AdditionalPrinterColumns[0].JSONPath != ".metadata.creationTimestamp" {
			t.Errorf("version %s printer columns %+v, want Age", v.Name, v.AdditionalPrinterColumns)
		}
		root := v.Schema.OpenAPIV3Schema
		if root.Description != "Widget is an example." || !cmp.Equal(root.Required, []string{"spec"}) {
			t.Errorf("version %s: description %q, required %v", v.Name, root.Description, root.Required)
		}
		if status := root.Properties["status"]; status.Type != "object" || status.XPreserveUnknownFields == nil || !*status.XPreserveUnknownFields {
			t.Errorf("version %s: status schema %+v, want a free-form object", v.Name, status)
		}
		if spec := root.Properties["spec"]; spec.Properties["name"].Type != "string" || !strings.Contains(spec.Description, "crdgen.test.Node") {
			t.Errorf("version %s: spec schema %+v, want that of crdgen.test.Node", v.Name, spec)
		}
	}
	// Versions must not share one schema object: editing one would change all.
	crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Description = "changed"
	if crd.Spec.Versions[1].Schema.OpenAPIV3Schema.Description == "changed" {
		t.Error("versions share their schema")
	}
}

func TestCRDRejectsIncompleteResources(t *testing.T) {
	node := testMessage(t, "Node")
	valid := func() Resource {
		return Resource{Group: "example.dev", Kind: "Widget", Plural: "widgets", Versions: []string{"v1"}, StorageVersion: "v1", Spec: node}
	}
	tests := []struct {
		name   string
		change func(*Resource)
		want   string
	}{
		{"no group", func(r *Resource) { r.Group = "" }, "group is required"},
		{"no plural", func(r *Resource) { r.Plural = "" }, "plural is required"},
		{"no spec", func(r *Resource) { r.Spec = nil }, "spec message is required"},
		{"no versions", func(r *Resource) { r.Versions = nil }, "at least one version is required"},
		{"storage not served", func(r *Resource) { r.StorageVersion = "v2" }, `storage version "v2" is not one of the versions [v1]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := valid()
			tc.change(&r)
			_, err := CRD(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CRD() error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
