// Package crdgen builds Kubernetes CustomResourceDefinitions from protobuf messages,
// so that the schemas the API server enforces are those of the API types Palisade
// decodes, not a second hand-written copy.
//
// The OpenAPI v3 schema follows protojson, the encoding Palisade reads specs in:
// lowerCamelCase field names, 64-bit integers as numbers or strings, enums by name,
// well-known types in their JSON forms. The result is a structural schema as the API
// server requires; what a structural schema cannot express (a oneof) becomes a CEL
// validation rule.
package crdgen

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/cel"
)

// Resource describes one custom resource kind.
type Resource struct {
	Group  string // API group, e.g. networking.istio.io
	Kind   string // e.g. VirtualService
	Plural string // e.g. virtualservices; the singular is the lowercased Kind
	// Versions are the served versions; all share the schema of Spec.
	Versions []string
	// StorageVersion is the one of Versions that objects are stored in.
	StorageVersion string
	ShortNames     []string
	Categories     []string
	// Description says what the kind is for; `kubectl explain` shows it.
	Description string
	// Spec is the message an object's spec holds.
	Spec protoreflect.MessageDescriptor
}

// CRD returns the CustomResourceDefinition of a namespaced resource whose spec is
// r.Spec, with a status subresource (free-form: controllers write conditions there).
func CRD(r Resource) (*apiextensionsv1.CustomResourceDefinition, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	spec, err := Schema(r.Spec)
	if err != nil {
		return nil, fmt.Errorf("%s spec: %w", r.Kind, err)
	}
	spec.Description = fmt.Sprintf("Spec of the %s (%s).", r.Kind, r.Spec.FullName())
	root := apiextensionsv1.JSONSchemaProps{
		Type:        "object",
		Description: r.Description,
		Required:    []string{"spec"},
		Properties: map[string]apiextensionsv1.JSONSchemaProps{
			"spec": spec,
			"status": {
				Type:                   "object",
				Description:            "Status written by the control plane, such as conditions.",
				XPreserveUnknownFields: ptr(true),
			},
		},
	}
	crd := &apiextensionsv1.CustomResourceDefinition{
		TypeMeta:   metav1.TypeMeta{APIVersion: apiextensionsv1.SchemeGroupVersion.String(), Kind: "CustomResourceDefinition"},
		ObjectMeta: metav1.ObjectMeta{Name: r.Plural + "." + r.Group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: r.Group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{
				Kind:       r.Kind,
				ListKind:   r.Kind + "List",
				Plural:     r.Plural,
				Singular:   strings.ToLower(r.Kind),
				ShortNames: r.ShortNames,
				Categories: r.Categories,
			},
			Scope: apiextensionsv1.NamespaceScoped,
		},
	}
	for _, v := range r.Versions {
		schema := root.DeepCopy()
		crd.Spec.Versions = append(crd.Spec.Versions, apiextensionsv1.CustomResourceDefinitionVersion{
			Name:         v,
			Served:       true,
			Storage:      v == r.StorageVersion,
			Schema:       &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: schema},
			Subresources: &apiextensionsv1.CustomResourceSubresources{Status: &apiextensionsv1.CustomResourceSubresourceStatus{}},
			AdditionalPrinterColumns: []apiextensionsv1.CustomResourceColumnDefinition{{
				Name:     "Age",
				Type:     "date",
				JSONPath: ".metadata.creationTimestamp",
			}},
		})
	}
	return crd, nil
}

func (r Resource) validate() error {
	var errs []error
	for _, f := range []struct{ name, value string }{{"group", r.Group}, {"kind", r.Kind}, {"plural", r.Plural}} {
		if f.value == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.name))
		}
	}
	if r.Spec == nil {
		errs = append(errs, errors.New("spec message is required"))
	}
	switch {
	case len(r.Versions) == 0:
		errs = append(errs, errors.New("at least one version is required"))
	case !slices.Contains(r.Versions, r.StorageVersion):
		errs = append(errs, fmt.Errorf("storage version %q is not one of the versions %v", r.StorageVersion, r.Versions))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("resource %s.%s: %w", r.Kind, r.Group, err)
	}
	return nil
}

// Schema returns the structural OpenAPI v3 schema of a message in its protojson form.
func Schema(md protoreflect.MessageDescriptor) (apiextensionsv1.JSONSchemaProps, error) {
	if md == nil {
		return apiextensionsv1.JSONSchemaProps{}, errors.New("nil message descriptor")
	}
	return messageSchema(md, nil)
}

// messageSchema maps a message; open holds the messages being mapped further up, to
// cut recursion (a structural schema must be finite).
func messageSchema(md protoreflect.MessageDescriptor, open []protoreflect.FullName) (apiextensionsv1.JSONSchemaProps, error) {
	if s, ok := wellKnownSchema(md.FullName()); ok {
		return s, nil
	}
	if slices.Contains(open, md.FullName()) {
		return apiextensionsv1.JSONSchemaProps{
			Type:                   "object",
			Description:            fmt.Sprintf("A nested %s; recursive, so its fields are not checked here.", md.FullName()),
			XPreserveUnknownFields: ptr(true),
		}, nil
	}
	open = append(open, md.FullName())
	s := apiextensionsv1.JSONSchemaProps{Type: "object"}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		fs, err := fieldSchema(fd, open)
		if err != nil {
			return s, fmt.Errorf("%s: %w", fd.JSONName(), err)
		}
		if s.Properties == nil {
			s.Properties = map[string]apiextensionsv1.JSONSchemaProps{}
		}
		s.Properties[fd.JSONName()] = fs
	}
	oneofs := md.Oneofs()
	for i := range oneofs.Len() {
		od := oneofs.Get(i)
		if od.IsSynthetic() || od.Fields().Len() < 2 { // a proto3 optional field: no choice
			continue
		}
		rule, err := atMostOneRule(od)
		if err != nil {
			return s, fmt.Errorf("oneof %s: %w", od.Name(), err)
		}
		s.XValidations = append(s.XValidations, rule)
	}
	return s, nil
}

func fieldSchema(fd protoreflect.FieldDescriptor, open []protoreflect.FullName) (apiextensionsv1.JSONSchemaProps, error) {
	if fd.IsMap() {
		value, err := singularSchema(fd.MapValue(), open)
		if err != nil {
			return value, err
		}
		return apiextensionsv1.JSONSchemaProps{
			Type:                 "object",
			AdditionalProperties: &apiextensionsv1.JSONSchemaPropsOrBool{Allows: true, Schema: &value},
		}, nil
	}
	item, err := singularSchema(fd, open)
	if err != nil || !fd.IsList() {
		return item, err
	}
	return apiextensionsv1.JSONSchemaProps{Type: "array", Items: &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &item}}, nil
}

// singularSchema maps one value of a field, ignoring whether the field repeats.
func singularSchema(fd protoreflect.FieldDescriptor, open []protoreflect.FullName) (apiextensionsv1.JSONSchemaProps, error) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return apiextensionsv1.JSONSchemaProps{Type: "boolean"}, nil
	case protoreflect.StringKind:
		return apiextensionsv1.JSONSchemaProps{Type: "string"}, nil
	case protoreflect.BytesKind:
		return apiextensionsv1.JSONSchemaProps{Type: "string", Format: "byte"}, nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return apiextensionsv1.JSONSchemaProps{Type: "integer", Format: "int32"}, nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return uint32Schema(), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		// protojson writes 64-bit integers as strings (JSON numbers lose precision)
		// and reads either form.
		return apiextensionsv1.JSONSchemaProps{XIntOrString: true}, nil
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return apiextensionsv1.JSONSchemaProps{Type: "number"}, nil
	case protoreflect.EnumKind:
		return enumSchema(fd.Enum())
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return messageSchema(fd.Message(), open)
	}
	return apiextensionsv1.JSONSchemaProps{}, fmt.Errorf("unsupported field kind %s", fd.Kind())
}

func uint32Schema() apiextensionsv1.JSONSchemaProps {
	// Not format int32: values above 2^31-1 are valid.
	return apiextensionsv1.JSONSchemaProps{Type: "integer", Minimum: ptr(0.0), Maximum: ptr(float64(math.MaxUint32))}
}

// enumSchema accepts the value names only. protojson reads numbers too, but names are
// what users write and what Istio's own CRDs accept.
func enumSchema(ed protoreflect.EnumDescriptor) (apiextensionsv1.JSONSchemaProps, error) {
	if ed.FullName() == "google.protobuf.NullValue" {
		return apiextensionsv1.JSONSchemaProps{XPreserveUnknownFields: ptr(true), Nullable: true}, nil
	}
	s := apiextensionsv1.JSONSchemaProps{Type: "string"}
	values := ed.Values()
	for i := range values.Len() {
		s.Enum = append(s.Enum, apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf("%q", values.Get(i).Name()))})
	}
	return s, nil
}

// wellKnownSchema maps the well-known types that protojson encodes specially.
func wellKnownSchema(name protoreflect.FullName) (apiextensionsv1.JSONSchemaProps, bool) {
	nullable := func(s apiextensionsv1.JSONSchemaProps) apiextensionsv1.JSONSchemaProps {
		s.Nullable = true
		return s
	}
	switch name {
	case "google.protobuf.Duration":
		return apiextensionsv1.JSONSchemaProps{Type: "string", Description: `A duration such as "1.5s".`}, true
	case "google.protobuf.Timestamp":
		return apiextensionsv1.JSONSchemaProps{Type: "string", Format: "date-time"}, true
	case "google.protobuf.FieldMask":
		return apiextensionsv1.JSONSchemaProps{Type: "string"}, true
	case "google.protobuf.Empty":
		return apiextensionsv1.JSONSchemaProps{Type: "object"}, true
	case "google.protobuf.Struct", "google.protobuf.Any":
		return apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: ptr(true)}, true
	case "google.protobuf.Value":
		return apiextensionsv1.JSONSchemaProps{XPreserveUnknownFields: ptr(true)}, true
	case "google.protobuf.ListValue":
		return apiextensionsv1.JSONSchemaProps{
			Type:  "array",
			Items: &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &apiextensionsv1.JSONSchemaProps{XPreserveUnknownFields: ptr(true)}},
		}, true
	case "google.protobuf.BoolValue":
		return nullable(apiextensionsv1.JSONSchemaProps{Type: "boolean"}), true
	case "google.protobuf.StringValue":
		return nullable(apiextensionsv1.JSONSchemaProps{Type: "string"}), true
	case "google.protobuf.BytesValue":
		return nullable(apiextensionsv1.JSONSchemaProps{Type: "string", Format: "byte"}), true
	case "google.protobuf.Int32Value":
		return nullable(apiextensionsv1.JSONSchemaProps{Type: "integer", Format: "int32"}), true
	case "google.protobuf.UInt32Value":
		return nullable(uint32Schema()), true
	case "google.protobuf.Int64Value", "google.protobuf.UInt64Value":
		return nullable(apiextensionsv1.JSONSchemaProps{XIntOrString: true}), true
	case "google.protobuf.FloatValue", "google.protobuf.DoubleValue":
		return nullable(apiextensionsv1.JSONSchemaProps{Type: "number"}), true
	}
	return apiextensionsv1.JSONSchemaProps{}, false
}

// atMostOneRule is the CEL rule allowing at most one member of a oneof to be set.
// Counting has() results keeps the rule's cost constant, whatever the schema.
func atMostOneRule(od protoreflect.OneofDescriptor) (apiextensionsv1.ValidationRule, error) {
	fields := od.Fields()
	var names, terms []string
	for i := range fields.Len() {
		name := fields.Get(i).JSONName()
		ident, ok := cel.Escape(name)
		if !ok {
			return apiextensionsv1.ValidationRule{}, fmt.Errorf("field name %q cannot be written in CEL", name)
		}
		names = append(names, name)
		terms = append(terms, fmt.Sprintf("(has(self.%s) ? 1 : 0)", ident))
	}
	return apiextensionsv1.ValidationRule{
		Rule:    strings.Join(terms, " + ") + " <= 1",
		Message: "at most one of " + strings.Join(names, ", "),
	}, nil
}

func ptr[T any](v T) *T { return &v }
