package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"
)

// DefaultNamespace is used for objects whose metadata names no namespace, as kubectl
// does with its default context.
const DefaultNamespace = "default"

// MaxDocumentBytes bounds one YAML document; larger documents are rejected rather than
// parsed, so a runaway file cannot exhaust memory.
const MaxDocumentBytes = 4 << 20

type envelope struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

// Decode parses every YAML document in data. It returns the objects that decoded and
// validated, and a diagnostic for every document that did not. Documents of kinds
// Palisade does not read are reported as warnings and skipped.
func Decode(file string, data []byte) ([]Object, []Diagnostic) {
	var objs []Object
	var diags []Diagnostic
	for i, doc := range splitDocuments(data) {
		src := Source{File: file, Index: i}
		obj, skip, err := decodeDocument(src, doc)
		switch {
		case err != nil:
			diags = append(diags, Diagnostic{Severity: SeverityError, Source: src, Object: obj.Key, Message: err.Error()})
		case skip != "":
			diags = append(diags, Diagnostic{Severity: SeverityWarning, Source: src, Object: obj.Key, Message: skip})
		case obj.Spec != nil:
			objs = append(objs, obj)
		}
	}
	return objs, diags
}

// decodeDocument decodes one document. An empty document yields a zero Object. A
// non-empty skip reason means the document is well formed but not for Palisade.
func decodeDocument(src Source, doc []byte) (obj Object, skip string, err error) {
	obj.Source = src
	if len(doc) > MaxDocumentBytes {
		return obj, "", fmt.Errorf("document is %d bytes, larger than the %d byte limit", len(doc), MaxDocumentBytes)
	}
	if len(bytes.TrimSpace(doc)) == 0 {
		return obj, "", nil // a stream of separators should not cost a YAML parse each
	}
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return obj, "", fmt.Errorf("invalid YAML: %w", err)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
		return obj, "", nil // empty document, e.g. a trailing "---"
	}
	var env envelope
	if err := json.Unmarshal(js, &env); err != nil {
		return obj, "", fmt.Errorf("not a Kubernetes-style object (apiVersion, kind, metadata, spec): %w", err)
	}
	obj.Kind = Kind(env.Kind)
	obj.Name = env.Metadata.Name
	obj.Namespace = env.Metadata.Namespace
	if obj.Namespace == "" {
		obj.Namespace = DefaultNamespace
	}
	obj.Labels = env.Metadata.Labels

	group, version, _ := strings.Cut(env.APIVersion, "/")
	if env.Kind == "" || env.APIVersion == "" {
		return obj, "", errors.New("apiVersion and kind are required")
	}
	spec := newSpec(obj.Kind)
	info, known := kinds[obj.Kind]
	if !known || group != info.group || spec == nil {
		return obj, fmt.Sprintf("kind %s in %s is not read by Palisade; skipped", env.Kind, env.APIVersion), nil
	}
	if !slices.Contains(info.versions, version) {
		return obj, "", fmt.Errorf("unsupported apiVersion %s (use %s/%s)", env.APIVersion, info.group, info.versions[0])
	}
	if err := validateObjectName(obj.Name, obj.Namespace); err != nil {
		return obj, "", err
	}
	if len(env.Spec) == 0 || string(env.Spec) == "null" {
		return obj, "", errors.New("spec is required")
	}
	specJSON, err := normalizedSpec(env.Spec, spec)
	if err != nil {
		return obj, "", err
	}
	if err := protojson.Unmarshal(specJSON, spec); err != nil {
		return obj, "", fmt.Errorf("spec: %s", protojsonMessage(err))
	}
	obj.Spec = spec
	if err := Validate(obj); err != nil {
		return obj, "", err
	}
	return obj, "", nil
}

// normalizedSpec rewrites the spec's duration strings into the form protojson reads.
// Its errors name the offending field.
func normalizedSpec(raw json.RawMessage, spec proto.Message) ([]byte, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, errors.New("spec: must be an object")
	}
	var errs []error
	normalizeDurations(spec.ProtoReflect().Descriptor(), v, "spec", &errs)
	if _, ok := spec.(*security.PeerAuthentication); ok {
		// Decoded, an empty map is no map: Istio's rule against it is checked here.
		if m, ok := v.(map[string]any)["portLevelMtls"].(map[string]any); ok && len(m) == 0 {
			errs = append(errs, errors.New("spec.portLevelMtls: if set, it must name at least one port"))
		}
	}
	if len(errs) > 0 {
		// Map iteration found them in random order; report them in a stable one.
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return nil, errors.Join(errs...)
	}
	return json.Marshal(v)
}

// protojsonPosition is the "(line 1:225): " part of a protojson error; it points into
// the re-encoded JSON rather than the user's YAML, so it is dropped.
var protojsonPosition = regexp.MustCompile(`^\(line \d+:\d+\):[\s\x{00a0}]*`)

// protojsonMessage strips the "proto: " prefix and the position protojson puts on its
// errors. The prefix is followed by a space or, at random, a no-break space (protobuf's
// way of keeping callers from matching error text), hence the TrimLeft.
func protojsonMessage(err error) string {
	msg := strings.TrimLeft(strings.TrimPrefix(err.Error(), "proto:"), " \u00a0")
	return protojsonPosition.ReplaceAllString(msg, "")
}

// splitDocuments splits a multi-document YAML stream on "---" separator lines.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	start := 0 // start of the current document
	for pos := 0; pos < len(data); {
		end := bytes.IndexByte(data[pos:], '\n')
		next := pos + end + 1
		if end < 0 {
			end, next = len(data)-pos, len(data)
		}
		if isSeparator(bytes.TrimSuffix(data[pos:pos+end], []byte("\r"))) {
			docs = append(docs, data[start:pos])
			start = next
		}
		pos = next
	}
	docs = append(docs, data[start:])
	// A leading separator produces an empty first document; drop it so that indexes
	// count the documents a reader sees.
	if len(docs) > 1 && len(bytes.TrimSpace(docs[0])) == 0 {
		docs = docs[1:]
	}
	return docs
}

func isSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := bytes.TrimSpace(line[3:])
	return len(rest) == 0 || rest[0] == '#'
}
