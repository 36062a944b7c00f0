package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/identity/kubeca"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/webhook"
)

// ImageRepository is where palisaded's images are published, tagged by release.
const ImageRepository = "ghcr.io/palisade-mesh/palisaded"

// Defaults of Options.
const (
	DefaultNamespace   = "palisade-system"
	DefaultImage       = ImageRepository + ":latest"
	DefaultReplicas    = 2
	DefaultTrustDomain = "cluster.local"
)

// Name is the name of palisaded's Deployment, Service and ServiceAccount, and of its
// roles and their bindings.
const Name = "palisaded"

// DataDir is where palisaded keeps its state in the pod (an emptyDir: the CA it
// shares among replicas lives in the Secret palisade-ca).
const DataDir = "/var/lib/palisade"

// The ports palisaded listens on, the same in the pod and in its Service.
const (
	PortXDS           = 15010
	PortCA            = 15012
	PortBundle        = 15013
	PortMonitoring    = 15014
	PortPolicyBundles = 15016
	PortWebhooks      = 15017
	PortAuthz         = 9191
)

// The names of the webhooks in the two webhook configurations.
const (
	InjectWebhookName   = "inject.sidecar.palisade.dev"
	ValidateWebhookName = "validate.palisade.dev"
)

// Options select what Render writes. Start from DefaultOptions; Render fills in the
// defaults of the other zero fields.
type Options struct {
	// Namespace of palisaded; default DefaultNamespace.
	Namespace string
	// Image of palisaded; default DefaultImage.
	Image string
	// Replicas of palisaded (they elect a leader); default DefaultReplicas.
	Replicas int32
	// TrustDomain of the mesh's SPIFFE identities; default DefaultTrustDomain.
	TrustDomain string
	// InjectionFailurePolicy is what the API server does with a pod to inject
	// when the webhook cannot be reached: Fail (the default: no pod escapes the
	// mesh) or Ignore.
	InjectionFailurePolicy admissionregistrationv1.FailurePolicyType
	// ValidationFailurePolicy is the same for the validation of configuration
	// objects; default Fail.
	ValidationFailurePolicy admissionregistrationv1.FailurePolicyType
	// GatewayAPI adds the Gateway API's standard-channel CRDs.
	GatewayAPI bool
	// WebhookURL, "https://HOST:PORT", makes the API server call the webhooks at
	// that address rather than through palisaded's Service: for a palisaded
	// running outside the cluster.
	WebhookURL string
	// IncludePalisaded renders palisaded's Deployment and Service; false renders
	// everything else, for a palisaded outside the cluster (which then needs
	// WebhookURL).
	IncludePalisaded bool
}

// DefaultOptions returns the options of the standard installation.
func DefaultOptions() Options {
	return Options{IncludePalisaded: true}
}

// withDefaults returns o with its zero fields defaulted, or why o is invalid.
func (o Options) withDefaults() (Options, error) {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Image == "" {
		o.Image = DefaultImage
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.InjectionFailurePolicy == "" {
		o.InjectionFailurePolicy = admissionregistrationv1.Fail
	}
	if o.ValidationFailurePolicy == "" {
		o.ValidationFailurePolicy = admissionregistrationv1.Fail
	}
	var errs []error
	for _, msg := range validation.IsDNS1123Label(o.Namespace) {
		errs = append(errs, fmt.Errorf("namespace %q: %s", o.Namespace, msg))
	}
	if strings.ContainsAny(o.Image, " \t\n") {
		errs = append(errs, fmt.Errorf("image %q contains white space", o.Image))
	}
	if o.Replicas < 0 {
		errs = append(errs, fmt.Errorf("replicas %d is negative", o.Replicas))
	}
	if _, err := spiffeid.TrustDomainFromString(o.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("trust domain %q: %w", o.TrustDomain, err))
	}
	for name, p := range map[string]admissionregistrationv1.FailurePolicyType{
		"injection": o.InjectionFailurePolicy, "validation": o.ValidationFailurePolicy,
	} {
		if p != admissionregistrationv1.Fail && p != admissionregistrationv1.Ignore {
			errs = append(errs, fmt.Errorf("%s failure policy %q: use Fail or Ignore", name, p))
		}
	}
	if o.WebhookURL != "" {
		if err := validateWebhookURL(o.WebhookURL); err != nil {
			errs = append(errs, fmt.Errorf("webhook URL %q: %w", o.WebhookURL, err))
		}
	} else if !o.IncludePalisaded {
		errs = append(errs, errors.New("without palisaded in the cluster (IncludePalisaded false) the webhook URL is required; start from DefaultOptions for an installation in the cluster"))
	}
	return o, errors.Join(errs...)
}

func validateWebhookURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return err
	case u.Scheme != "https":
		return errors.New("the scheme must be https")
	case u.Hostname() == "" || u.Port() == "":
		return errors.New("want https://HOST:PORT")
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return errors.New("want https://HOST:PORT, without user, path, query or fragment")
	}
	return nil
}

// Render returns the manifests of an installation as multi-document YAML, in the
// order they can be applied in: the Namespace, the CRDs, then the rest.
func Render(o Options) ([]byte, error) {
	objs, err := Objects(o)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for i, obj := range objs {
		data, err := yaml.Marshal(obj.Object)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(data)
	}
	return out.Bytes(), nil
}

// Objects returns the objects Render writes, in the same order.
func Objects(o Options) ([]*unstructured.Unstructured, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("install options: %w", err)
	}
	crds, err := embeddedObjects("crds")
	if err != nil {
		return nil, err
	}
	clusterRole, err := palisadedClusterRole(crds)
	if err != nil {
		return nil, err
	}
	if o.GatewayAPI {
		gateway, err := embeddedObjects("crds/gateway-api")
		if err != nil {
			return nil, err
		}
		crds = append(crds, gateway...)
	}
	typed := []runtime.Object{
		&corev1.ServiceAccount{ObjectMeta: o.meta(Name)},
		clusterRole,
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metadata(Name),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: o.Namespace}},
		},
		o.role(),
		&rbacv1.RoleBinding{
			ObjectMeta: o.meta(Name),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: o.Namespace}},
		},
	}
	if o.IncludePalisaded {
		typed = append(typed, o.deployment(), o.service())
	}
	typed = append(typed, o.mutatingWebhooks(), o.validatingWebhooks())

	objs := []*unstructured.Unstructured{}
	ns, err := toUnstructured(o.namespace())
	if err != nil {
		return nil, err
	}
	objs = append(append(objs, ns), crds...)
	for _, t := range typed {
		u, err := toUnstructured(t)
		if err != nil {
			return nil, err
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// embeddedObjects decodes the YAML files of one folder of crdFiles.
func embeddedObjects(dir string) ([]*unstructured.Unstructured, error) {
	names, err := fs.Glob(crdFiles, path.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, name := range names {
		data, err := crdFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			var obj map[string]any
			if err := yaml.Unmarshal(doc, &obj); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if obj != nil { // a document of comments only
				objs = append(objs, &unstructured.Unstructured{Object: obj})
			}
		}
	}
	return objs, nil
}

// toUnstructured converts a typed object, with its apiVersion and kind, leaving out
// the fields the API server owns (status, creationTimestamp), which are not the
// installer's to set.
func toUnstructured(obj runtime.Object) (*unstructured.Unstructured, error) {
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		return nil, err
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	delete(m, "status")
	if spec, ok := m["spec"].(map[string]any); ok && len(spec) == 0 {
		delete(m, "spec") // a Namespace's
	}
	dropNullTimestamps(m)
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(gvks[0])
	return u, nil
}

func dropNullTimestamps(m map[string]any) {
	for k, v := range m {
		switch v := v.(type) {
		case nil:
			if k == "creationTimestamp" {
				delete(m, k)
			}
		case map[string]any:
			dropNullTimestamps(v)
		case []any:
			for _, item := range v {
				if item, ok := item.(map[string]any); ok {
					dropNullTimestamps(item)
				}
			}
		}
	}
}

// labels mark every object of the installation.
func labels() map[string]string {
	return map[string]string{"app.kubernetes.io/name": Name, "app.kubernetes.io/part-of": "palisade"}
}

func metadata(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Labels: labels()}
}

func (o Options) meta(name string) metav1.ObjectMeta {
	m := metadata(name)
	m.Namespace = o.Namespace
	return m
}

var readOnly = []string{"get", "list", "watch"}

// namespace is palisaded's namespace. Its pods must meet the restricted Pod
// Security Standard, as palisaded's do.
func (o Options) namespace() *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metadata(o.Namespace)}
	ns.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	return ns
}

// palisadedClusterRole allows what palisaded does cluster-wide and nothing more: read
// the service registry and the kinds of Palisade's CRDs, write their statuses,
// review tokens, keep the webhooks' CA bundles and publish the CA roots in every
// namespace.
func palisadedClusterRole(crds []*unstructured.Unstructured) (*rbacv1.ClusterRole, error) {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces", "nodes"}, Verbs: readOnly},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: readOnly},
		{APIGroups: []string{"apiextensions.k8s.io"}, Resources: []string{"customresourcedefinitions"}, Verbs: readOnly},
	}
	var groups []string
	plurals := map[string][]string{}
	for _, crd := range crds {
		if crd.GetKind() != "CustomResourceDefinition" {
			continue
		}
		group, _, err := unstructured.NestedString(crd.Object, "spec", "group")
		if err != nil {
			return nil, err
		}
		plural, _, err := unstructured.NestedString(crd.Object, "spec", "names", "plural")
		if err != nil {
			return nil, err
		}
		if _, seen := plurals[group]; !seen {
			groups = append(groups, group)
		}
		plurals[group] = append(plurals[group], plural)
	}
	for _, group := range groups {
		var status []string
		for _, p := range plurals[group] {
			status = append(status, p+"/status")
		}
		rules = append(rules,
			rbacv1.PolicyRule{APIGroups: []string{group}, Resources: plurals[group], Verbs: readOnly},
			rbacv1.PolicyRule{APIGroups: []string{group}, Resources: status, Verbs: []string{"get", "update", "patch"}},
		)
	}
	webhookConfigurations := []string{"mutatingwebhookconfigurations", "validatingwebhookconfigurations"}
	rules = append(rules,
		rbacv1.PolicyRule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		rbacv1.PolicyRule{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: webhookConfigurations, Verbs: readOnly},
		rbacv1.PolicyRule{
			APIGroups: []string{"admissionregistration.k8s.io"}, Resources: webhookConfigurations, Verbs: []string{"update", "patch"},
			ResourceNames: []string{webhook.MutatingConfigurationName, webhook.ValidatingConfigurationName},
		},
		// The CA roots ConfigMap of every namespace. RBAC cannot restrict create
		// by name (the name is not known when it is authorized).
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
	)
	return &rbacv1.ClusterRole{ObjectMeta: metadata(Name), Rules: rules}, nil
}

// role allows what palisaded does in its own namespace: elect a leader, record
// events, and share the CA among replicas through a Secret.
func (o Options) role() *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: o.meta(Name),
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
			// The CA Secret: created by the first replica, read by the others. RBAC
			// cannot restrict create by name.
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: []string{kubeca.DefaultSecretName}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
		},
	}
}

// port is one of palisaded's ports.
type port struct {
	name   string
	number int32
	flag   string
}

// ports are palisaded's ports, and the flags that open them.
var ports = []port{
	{"grpc-xds", PortXDS, "xds-address"},
	{"grpc-ca", PortCA, "ca-address"},
	{"https-bundle", PortBundle, "bundle-endpoint-address"},
	{"http-monitoring", PortMonitoring, "monitoring-address"},
	{"http-policy", PortPolicyBundles, "policy-bundle-address"},
	{"grpc-authz", PortAuthz, "authz-address"},
	{"https-webhook", PortWebhooks, "webhook-address"},
}

func (o Options) deployment() *appsv1.Deployment {
	selector := map[string]string{"app.kubernetes.io/name": Name}
	podLabels := labels()
	// Never inject a sidecar into the control plane, whatever its namespace says.
	podLabels[webhook.InjectKey] = "false"
	args := []string{"--source=kubernetes"}
	var containerPorts []corev1.ContainerPort
	for _, p := range ports {
		args = append(args, fmt.Sprintf("--%s=:%d", p.flag, p.number))
		containerPorts = append(containerPorts, corev1.ContainerPort{Name: p.name, ContainerPort: p.number, Protocol: corev1.ProtocolTCP})
	}
	args = append(args, "--trust-domain="+o.TrustDomain, "--data-dir="+DataDir)
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	return &appsv1.Deployment{
		ObjectMeta: o.meta(Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: &o.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			// Start a new replica before stopping an old one: the webhooks (which
			// fail closed by default) stay served through a rollout.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr(intstr.FromInt32(0)),
					MaxSurge:       ptr(intstr.FromInt32(1)),
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName: Name,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr(true),
						RunAsUser:      ptr(int64(65532)),
						RunAsGroup:     ptr(int64(65532)),
						FSGroup:        ptr(int64(65532)),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					// Replicas on different nodes, where there are enough.
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
							Weight: 100,
							PodAffinityTerm: corev1.PodAffinityTerm{
								LabelSelector: &metav1.LabelSelector{MatchLabels: selector},
								TopologyKey:   corev1.LabelHostname,
							},
						}},
					}},
					Containers: []corev1.Container{{
						Name:  Name,
						Image: o.Image,
						Args:  args,
						Env:   []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace")},
						Ports: containerPorts,
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/healthz/ready", Port: intstr.FromInt32(PortMonitoring),
						}}},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("100m"),
							corev1.ResourceMemory: resource.MustParse("256Mi"),
						}},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot:             ptr(true),
							ReadOnlyRootFilesystem:   ptr(true),
							AllowPrivilegeEscalation: ptr(false),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: DataDir}},
					}},
					Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
				},
			},
		},
	}
}

func (o Options) service() *corev1.Service {
	var servicePorts []corev1.ServicePort
	for _, p := range ports {
		servicePorts = append(servicePorts, corev1.ServicePort{Name: p.name, Port: p.number, TargetPort: intstr.FromString(p.name), Protocol: corev1.ProtocolTCP})
	}
	return &corev1.Service{
		ObjectMeta: o.meta(Name),
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app.kubernetes.io/name": Name},
			Ports:    servicePorts,
		},
	}
}

// clientConfig says how the API server reaches a webhook at a path: through
// palisaded's Service, or at WebhookURL. The caBundle is left out: palisaded writes
// it, and leaving it out keeps a re-apply from erasing it.
func (o Options) clientConfig(path string) admissionregistrationv1.WebhookClientConfig {
	if o.WebhookURL != "" {
		u := strings.TrimSuffix(o.WebhookURL, "/") + path
		return admissionregistrationv1.WebhookClientConfig{URL: &u}
	}
	return admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
		Namespace: o.Namespace, Name: Name, Path: &path, Port: ptr(int32(PortWebhooks)),
	}}
}

func (o Options) mutatingWebhooks() *admissionregistrationv1.MutatingWebhookConfiguration {
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metadata(webhook.MutatingConfigurationName),
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         InjectWebhookName,
			ClientConfig: o.clientConfig(webhook.InjectPath),
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{webhook.NamespaceLabel: webhook.NamespaceLabelEnabled}},
			// Pods labelled out of injection are not even sent (the webhook also
			// honours the annotation, which a selector cannot see).
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: webhook.InjectKey, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false"},
			}}},
			FailurePolicy:           &o.InjectionFailurePolicy,
			SideEffects:             ptr(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      ptr(admissionregistrationv1.IfNeededReinvocationPolicy),
		}},
	}
}

func (o Options) validatingWebhooks() *admissionregistrationv1.ValidatingWebhookConfiguration {
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metadata(webhook.ValidatingConfigurationName),
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:         ValidateWebhookName,
			ClientConfig: o.clientConfig(webhook.ValidatePath),
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
				Rule: admissionregistrationv1.Rule{
					APIGroups:   []string{config.NetworkingGroup, config.SecurityGroup, config.PolicyGroup},
					APIVersions: []string{"*"},
					Resources:   []string{"*"},
				},
			}},
			FailurePolicy:           &o.ValidationFailurePolicy,
			SideEffects:             ptr(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
}

func ptr[T any](v T) *T { return &v }
