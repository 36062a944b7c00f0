package webhook

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"text/template"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

//go:embed templates/sidecar.yaml
var defaultTemplateText string

// DefaultTemplate is the injection template Palisade ships (templates/sidecar.yaml):
// the capture init container, the agent and the Envoy proxy.
var DefaultTemplate = template.Must(ParseTemplate("sidecar.yaml", defaultTemplateText))

// ParseTemplate parses an injection template. Besides text/template's built-in
// functions it has toJSON, which writes a value as JSON: a JSON string is a YAML
// string, so a quoted value cannot add YAML structure whatever it contains. A key
// missing from a map is an error rather than "<no value>".
func ParseTemplate(name, text string) (*template.Template, error) {
	return template.New(name).
		Option("missingkey=error").
		Funcs(template.FuncMap{"toJSON": toJSON}).
		Parse(text)
}

// LoadTemplate reads and parses an injection template file. A syntax error names
// the file's base name and line ("template: sidecar.yaml:12: ...").
func LoadTemplate(path string) (*template.Template, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("injection template: %w", err)
	}
	t, err := ParseTemplate(filepath.Base(path), string(text))
	if err != nil {
		return nil, fmt.Errorf("injection template %s: %w", path, err)
	}
	return t, nil
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// Values are palisaded's settings that a template renders with; they are the same
// for every pod.
type Values struct {
	// TrustDomain is the mesh's SPIFFE trust domain (e.g. cluster.local).
	TrustDomain string
	// AgentImage is the palisade-agent image, for the capture init container and
	// the agent.
	AgentImage string
	// ProxyImage is the Envoy image.
	ProxyImage string
	// CAAddress is palisaded's CA API (e.g. palisaded.palisade-system.svc:15012).
	CAAddress string
	// XDSAddress is palisaded's xDS server (e.g. palisaded.palisade-system.svc:15010).
	XDSAddress string
	// PolicyBundleURL, if set, makes the agent decide requests locally by the
	// policy bundles at this URL.
	PolicyBundleURL string
	// TokenAudience is the audience of the projected service-account token the
	// agent authenticates to the CA with; "" means DefaultTokenAudience.
	TokenAudience string
	// ProxyUID is the user the agent and the proxy run as, whose traffic is not
	// captured; 0 means DefaultProxyUID.
	ProxyUID int64
}

// Defaults of Values.
const (
	DefaultTokenAudience       = "palisade"
	DefaultProxyUID      int64 = 1337
)

func (v Values) withDefaults() Values {
	if v.TokenAudience == "" {
		v.TokenAudience = DefaultTokenAudience
	}
	if v.ProxyUID == 0 {
		v.ProxyUID = DefaultProxyUID
	}
	return v
}

func (v Values) check() error {
	var errs []error
	if _, err := spiffeid.TrustDomainFromString(v.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("TrustDomain %q: %w", v.TrustDomain, err))
	}
	for _, f := range []struct{ name, value string }{
		{"AgentImage", v.AgentImage}, {"ProxyImage", v.ProxyImage},
		{"CAAddress", v.CAAddress}, {"XDSAddress", v.XDSAddress},
	} {
		if f.value == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.name))
		}
	}
	if v.ProxyUID < 0 {
		errs = append(errs, fmt.Errorf("ProxyUID %d is negative", v.ProxyUID))
	}
	return errors.Join(errs...)
}

// TemplateData is what a template renders with.
type TemplateData struct {
	Values
	// Pod is the pod being created. Its metadata.namespace is filled in from the
	// admission request: pods created by controllers do not carry it yet.
	Pod *corev1.Pod
}

// sidecar is what a template renders: the parts of a pod that the injection adds.
type sidecar struct {
	InitContainers []corev1.Container `json:"initContainers,omitempty"`
	Containers     []corev1.Container `json:"containers,omitempty"`
	Volumes        []corev1.Volume    `json:"volumes,omitempty"`
	Annotations    map[string]string  `json:"annotations,omitempty"`
}

// render executes t and decodes its output strictly, so that a misspelt field in a
// custom template is an error rather than silently dropped.
func render(t *template.Template, data TemplateData) (*sidecar, error) {
	var out bytes.Buffer
	if err := t.Execute(&out, data); err != nil {
		return nil, fmt.Errorf("rendering the injection template: %w", err)
	}
	var s sidecar
	if err := yaml.UnmarshalStrict(out.Bytes(), &s); err != nil {
		return nil, fmt.Errorf("the injection template's output is not a sidecar (initContainers, containers, volumes, annotations): %w", err)
	}
	st := s.status("")
	if slices.Contains(slices.Concat(st.InitContainers, st.Containers, st.Volumes), "") {
		return nil, errors.New("the injection template renders a container or a volume without a name")
	}
	return &s, nil
}
