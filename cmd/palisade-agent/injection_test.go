package main

import (
	"bytes"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/webhook"
)

// injectedPod is a pod as the injector sees it, with Istio's traffic annotations,
// and renderedSidecar the containers webhook.DefaultTemplate adds to it.
var injectedPod = &corev1.Pod{
	ObjectMeta: metav1.ObjectMeta{
		Name:      "reviews-5d4f8-x2x",
		Namespace: "shop",
		Annotations: map[string]string{
			"traffic.sidecar.istio.io/excludeInboundPorts":     "8443",
			"traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32,fd00::/8",
		},
	},
	Spec:   corev1.PodSpec{ServiceAccountName: "reviews"},
	Status: corev1.PodStatus{PodIP: "10.244.1.7"},
}

func renderedSidecar(t *testing.T) map[string]corev1.Container {
	t.Helper()
	values := webhook.Values{
		TrustDomain:     "example.org",
		AgentImage:      "palisade-agent:test",
		ProxyImage:      "envoy:test",
		CAAddress:       "palisaded.palisade-system.svc:15012",
		XDSAddress:      "palisaded.palisade-system.svc:15010",
		PolicyBundleURL: "http://palisaded.palisade-system.svc:15016/bundles/palisade",
		TokenAudience:   webhook.DefaultTokenAudience,
		ProxyUID:        webhook.DefaultProxyUID,
	}
	var out bytes.Buffer
	if err := webhook.DefaultTemplate.Execute(&out, webhook.TemplateData{Values: values, Pod: injectedPod}); err != nil {
		t.Fatal(err)
	}
	var rendered struct {
		InitContainers []corev1.Container `json:"initContainers"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &rendered); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	byName := map[string]corev1.Container{}
	for _, c := range rendered.InitContainers {
		byName[c.Name] = c
	}
	return byName
}

// containerArgs are c's arguments after palisade-agent as the kubelet passes them:
// $(NAME) replaced by the value of c's environment variable NAME, which the test
// resolves from injectedPod's fields.
func containerArgs(t *testing.T, c corev1.Container) (args []string, env map[string]string) {
	t.Helper()
	if len(c.Command) != 1 || path.Base(c.Command[0]) != "palisade-agent" {
		t.Fatalf("container %s runs %v, not palisade-agent", c.Name, c.Command)
	}
	fields := map[string]string{
		"metadata.name":           injectedPod.Name,
		"metadata.namespace":      injectedPod.Namespace,
		"spec.serviceAccountName": injectedPod.Spec.ServiceAccountName,
		"status.podIP":            injectedPod.Status.PodIP,
	}
	env = map[string]string{}
	var refs []string
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			var ok bool
			if v, ok = fields[e.ValueFrom.FieldRef.FieldPath]; !ok {
				t.Fatalf("container %s: env %s from unknown field %s", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		env[e.Name] = v
		refs = append(refs, "$("+e.Name+")", v)
	}
	expand := strings.NewReplacer(refs...)
	for _, a := range c.Args {
		args = append(args, expand.Replace(a))
	}
	return args, env
}

// The capture init container's flags are accepted and give the rules the template
// means: the agent's monitoring port and the pod's excluded ports and ranges left
// alone, the proxy user's traffic not captured.
func TestInjectionTemplateCaptureFlags(t *testing.T) {
	args, _ := containerArgs(t, renderedSidecar(t)["palisade-init"])
	if len(args) == 0 || args[0] != "capture" {
		t.Fatalf("palisade-init args %v do not start with capture", args)
	}
	code, rules, errOut := runCaptureForTest(t, append(args[1:], "--dry-run")...)
	if code != 0 {
		t.Fatalf("palisade-agent %v: exit %d: %s", args, code, errOut)
	}
	for _, want := range []string{
		"-A PALISADE_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
		"-A PALISADE_INBOUND -p tcp -m tcp --dport 8443 -j RETURN",
		"-A PALISADE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
		"-A PALISADE_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
		"-A PALISADE_OUTPUT -m owner --gid-owner 1337 -j RETURN",
		"-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN",
		"-A PALISADE_OUTPUT -d fd00::/8 -j RETURN",
	} {
		if !strings.Contains(rules, want+"\n") {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
}

// The agent container's flags are accepted and mean what the template intends:
// the pod's identity, palisaded's addresses, files in the volumes the template
// mounts, and a bootstrap naming the pod as Istio's sidecars do.
func TestInjectionTemplateAgentFlags(t *testing.T) {
	c := renderedSidecar(t)["palisade-agent"]
	args, env := containerArgs(t, c)
	var o options
	fs := agentFlags(&o)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("palisade-agent %v: %v", args, err)
	}
	if fs.NArg() > 0 {
		t.Fatalf("palisade-agent %v: arguments left over: %v", args, fs.Args())
	}
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	workloads, err := o.workloads(td)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := workloads[0].id.String(), "spiffe://example.org/ns/shop/sa/reviews"; got != want {
		t.Errorf("identity %s, want %s", got, want)
	}
	for flag, want := range map[string]string{
		"ca-address":         "palisaded.palisade-system.svc:15012",
		"xds-address":        "palisaded.palisade-system.svc:15010",
		"monitoring-address": ":15020",
		"policy-bundle-url":  "http://palisaded.palisade-system.svc:15016/bundles/palisade",
	} {
		if got := fs.Lookup(flag).Value.String(); got != want {
			t.Errorf("--%s %q, want %q", flag, got, want)
		}
	}
	// Every file the agent reads or writes lies in a volume of its container.
	for flag, file := range map[string]string{
		"--token-file": o.tokenFile, "--ca-bundle": o.caBundle, "--socket": o.socket,
		"--envoy-bootstrap": o.envoyBootstrap, "--policy-bundle-key": o.authz.bundleKey,
		"--pod-labels-file": o.podLabelsFile,
	} {
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		}
		if !mounted {
			t.Errorf("%s %q is in none of the container's volumes %v", flag, file, c.VolumeMounts)
		}
	}

	pod := podEnv{
		getenv: func(k string) string { return env[k] },
		hostname: func() (string, error) {
			t.Error("the pod's name came from the host name, not POD_NAME")
			return "", nil
		},
		interfaceAddrs: func() ([]net.Addr, error) {
			t.Error("the pod's IPs came from its interfaces, not INSTANCE_IP")
			return nil, nil
		},
	}
	// The labels file is the downward API's, in a volume of its own.
	if o.podLabelsFile != "/etc/palisade/podinfo/labels" {
		t.Errorf("--pod-labels-file %q, want the downward API file /etc/palisade/podinfo/labels", o.podLabelsFile)
	}
	o.podLabelsFile = filepath.Join(t.TempDir(), "labels")
	if err := os.WriteFile(o.podLabelsFile, []byte("app=\"reviews\"\nversion=\"v1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bo, err := sidecarBootstrapOptions(o, workloads[0].id, pod)
	if err != nil {
		t.Fatal(err)
	}
	if bo.Labels["app"] != "reviews" || bo.Labels["version"] != "v1" {
		t.Errorf("bootstrap labels %v, want the pod's", bo.Labels)
	}
	if want := "sidecar~10.244.1.7~reviews-5d4f8-x2x.shop~shop.svc.cluster.local"; bo.NodeID != want {
		t.Errorf("node ID %q, want %q", bo.NodeID, want)
	}
	if bo.Namespace != "shop" || bo.ServiceAccount != "reviews" || bo.SDSSocket != o.socket {
		t.Errorf("bootstrap options %+v", bo)
	}
}
