package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-mesh/palisade/deploy"
	"github.com/palisade-mesh/palisade/test/backend"
	"github.com/palisade-mesh/palisade/test/kube"
	"github.com/palisade-mesh/palisade/webhook"
)

// palisadedNamespace is where the tests run palisaded's Kubernetes state (Lease,
// CA Secret), as the install manifests do.
const palisadedNamespace = "palisade-system"

// startKubePalisaded runs palisaded with the cluster as its config source, under the
// replica name pod, and with its admission webhooks on webhookAddr.
func startKubePalisaded(t *testing.T, c *kube.Cluster, pod, webhookAddr string) *daemon {
	t.Helper()
	host, _, _ := strings.Cut(webhookAddr, ":")
	d := &daemon{DataDir: t.TempDir(), SourceArgs: []string{
		"--source", "kubernetes", "--kubeconfig", c.Kubeconfig,
		"--namespace", palisadedNamespace, "--pod-name", pod,
		"--webhook-address", webhookAddr, "--webhook-dns-name", host,
		"--leader-lease-duration", "3s",
	}}
	d.DecisionLog = d.DataDir + "/decisions.log"
	d.start(t, false)
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("--- palisaded %s output ---\n%s", pod, d.out.String())
		}
	})
	return d
}

// newKubeCluster starts an API server with palisaded's namespace.
func newKubeCluster(t *testing.T) *kube.Cluster {
	t.Helper()
	c := kube.Start(t)
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: palisadedNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return c
}

// kubeReviews creates the reviews Service of namespace default with one pod and
// EndpointSlice per backend version, as the EndpointSlice controller would for
// pods serving on those addresses (no kubelet or controller runs here).
func kubeReviews(t *testing.T, c *kube.Cluster, backends map[string]*backend.Backend) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "reviews"},
			Ports:    []corev1.ServicePort{{Name: "grpc", Port: 9080, TargetPort: intstr.FromInt32(9080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := true
	for version, b := range backends {
		host, port := splitHostPort(t, b.Addr())
		name := "reviews-" + version
		_, err := c.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "reviews", "version": version}},
			Spec:       corev1.PodSpec{ServiceAccountName: "reviews", Containers: []corev1.Container{{Name: "app", Image: "reviews:" + version}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		portName := "grpc"
		_, err = c.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{
				Addresses:  []string{host},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: name},
			}},
			Ports: []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func splitHostPort(t *testing.T, addr string) (string, int32) {
	t.Helper()
	host, port, ok := strings.Cut(addr, ":")
	var n int32
	if _, err := fmt.Sscan(port, &n); !ok || err != nil {
		t.Fatalf("address %q", addr)
	}
	return host, n
}

// waitMix polls batches of calls until every version in want answers some of them.
func (c *client) waitMix(timeout time.Duration, want ...string) {
	c.t.Helper()
	var last *backend.Tally
	if err := poll(timeout, func() bool {
		last = c.calls(50, nil)
		for _, v := range want {
			if last.Versions[v] == 0 {
				return false
			}
		}
		return last.Errors == 0
	}); err != nil {
		c.t.Fatalf("traffic never reached all of %v: %v; last batch of 50: %s", want, err, last)
	}
}

const reviewsRouting = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
`

// TestKubeRouting: palisaded reads the cluster; a proxyless gRPC client reaches a
// Kubernetes Service's endpoints, kubectl apply of a VirtualService moves its traffic,
// and deleting the VirtualService moves it back.
func TestKubeRouting(t *testing.T) {
	t.Parallel()
	if !inNetworkNamespace(t) {
		return
	}
	c := newKubeCluster(t)
	v1 := startBackendAt(t, "v1", podAddresses[0]+":0")
	v2 := startBackendAt(t, "v2", podAddresses[1]+":0")
	kubeReviews(t, c, map[string]*backend.Backend{"v1": v1, "v2": v2})
	d := startKubePalisaded(t, c, "palisaded-0", freeAddr(t))
	cl := newClient(t, d, reviewsTarget)
	cl.waitMix(20*time.Second, "v1", "v2")

	c.ApplyCRDs(t)
	if out, err := c.Kubectl(t, reviewsRouting, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	took := cl.waitAll("v2", nil, 20*time.Second)
	t.Logf("the VirtualService took effect within %v", took.Round(time.Millisecond))
	if out, err := c.Kubectl(t, "", "delete", "virtualservice", "reviews", "-n", "default"); err != nil {
		t.Fatalf("kubectl delete: %v\n%s", err, out)
	}
	cl.waitMix(20*time.Second, "v1", "v2")
}

// leaseHolder is the replica holding palisaded's leader Lease, or "".
func leaseHolder(t *testing.T, c *kube.Cluster) string {
	t.Helper()
	lease, err := c.Client.CoordinationV1().Leases(palisadedNamespace).Get(context.Background(), "palisaded-leader", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		return ""
	}
	return *lease.Spec.HolderIdentity
}

func routingTo(subset string) string {
	return strings.Replace(reviewsRouting, "subset: v2}", "subset: "+subset+"}", 1)
}

// TestKubeReplicas: two palisaded replicas share one CA and both serve xDS; one
// leads. Killing the leader (no chance to hand over) moves leadership to the other;
// clients of both keep their configuration, the survivor's clients follow new
// changes, and the new leader writes statuses.
func TestKubeReplicas(t *testing.T) {
	t.Parallel()
	if !inNetworkNamespace(t) {
		return
	}
	c := newKubeCluster(t)
	kubeReviews(t, c, map[string]*backend.Backend{
		"v1": startBackendAt(t, "v1", podAddresses[0]+":0"),
		"v2": startBackendAt(t, "v2", podAddresses[1]+":0"),
	})
	c.ApplyCRDs(t)
	if out, err := c.Kubectl(t, reviewsRouting, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	replicas := map[string]*daemon{}
	for _, name := range []string{"palisaded-0", "palisaded-1"} {
		replicas[name] = startKubePalisaded(t, c, name, freeAddr(t))
	}
	roots := map[string]bool{}
	for _, d := range replicas {
		b, err := os.ReadFile(filepath.Join(d.DataDir, "root-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		roots[string(b)] = true
	}
	if len(roots) != 1 {
		t.Fatalf("the replicas have %d different CA roots, want one shared CA", len(roots))
	}
	var leader string
	if err := poll(20*time.Second, func() bool { leader = leaseHolder(t, c); return replicas[leader] != nil }); err != nil {
		t.Fatalf("no replica leads: %v", err)
	}
	clients := map[string]*client{}
	for name, d := range replicas {
		clients[name] = newClient(t, d, reviewsTarget)
		clients[name].waitAll("v2", nil, 20*time.Second)
	}

	killed := time.Now()
	if err := replicas[leader].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var survivor string
	for name := range replicas {
		if name != leader {
			survivor = name
		}
	}
	if err := poll(30*time.Second, func() bool { return leaseHolder(t, c) == survivor }); err != nil {
		t.Fatalf("leadership did not move to %s after %s was killed: holder %q", survivor, leader, leaseHolder(t, c))
	}
	t.Logf("leadership moved from %s to %s %v after the kill", leader, survivor, time.Since(killed).Round(time.Millisecond))
	for name, cl := range clients {
		if tally := cl.calls(100, nil); tally.Errors != 0 || tally.Versions["v2"] != 100 {
			t.Errorf("client of %s after the leader was killed: %s, want 100 calls to v2", name, tally)
		}
	}
	if out, err := c.Kubectl(t, routingTo("v1"), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	clients[survivor].waitAll("v1", nil, 20*time.Second)

	// The new leader writes statuses: a route to a subset no DestinationRule defines.
	if out, err := c.Kubectl(t, routingTo("v3"), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	var status string
	if err := poll(20*time.Second, func() bool {
		status, _ = c.Kubectl(t, "", "get", "virtualservice", "reviews", "-n", "default", "-o",
			`jsonpath={.status.conditions[?(@.type=="Reconciled")].status} {.status.conditions[?(@.type=="Reconciled")].message}`)
		return strings.HasPrefix(status, "False ") && strings.Contains(status, "v3")
	}); err != nil {
		t.Fatalf("status of the VirtualService routing to subset v3: %q, want Reconciled False naming v3", status)
	}
	t.Logf("status written by %s: %s", survivor, status)
}

// installOutOfCluster applies the install manifests (CRDs, RBAC, webhook
// configurations) for a palisaded outside the cluster whose webhooks are at
// webhookAddr, as palisadectl install --webhook-url renders them.
func installOutOfCluster(t *testing.T, c *kube.Cluster, webhookAddr string) {
	t.Helper()
	manifests, err := deploy.Render(deploy.Options{WebhookURL: "https://" + webhookAddr})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(t, string(manifests), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply of the install manifests: %v\n%s", err, out)
	}
	if out, err := c.Kubectl(t, "", "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
		t.Fatalf("waiting for the CRDs: %v\n%s", err, out)
	}
}

// kubePod is a pod of service account reviews with one application container.
func kubePod(namespace, name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: "reviews", Containers: []corev1.Container{{Name: "app", Image: "reviews:v1"}}},
	}
}

// agentContainers counts the palisade-agent containers of a pod (a native sidecar
// or a plain container).
func agentContainers(p *corev1.Pod) int {
	n := 0
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == webhook.AgentContainerName {
			n++
		}
	}
	return n
}

// TestKubeWebhooksAndIdentity: palisaded's admission webhooks, registered by the
// install manifests without a caBundle (palisaded patches it), inject pods of
// labelled namespaces only, once, honouring the opt-out, and refuse invalid
// configuration at kubectl apply; an agent with a pod's service-account token gets
// exactly that service account's identity.
func TestKubeWebhooksAndIdentity(t *testing.T) {
	t.Parallel()
	c := newKubeCluster(t)
	webhookAddr := freeAddr(t)
	installOutOfCluster(t, c, webhookAddr)
	d := startKubePalisaded(t, c, "palisaded-0", webhookAddr)
	ctx := context.Background()

	// The leader patches the caBundle palisaded's webhooks are verified with.
	if err := poll(20*time.Second, func() bool {
		m, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhook.MutatingConfigurationName, metav1.GetOptions{})
		return err == nil && len(m.Webhooks) > 0 && len(m.Webhooks[0].ClientConfig.CABundle) > 0
	}); err != nil {
		t.Fatalf("palisaded did not patch the caBundle of %s: %v", webhook.MutatingConfigurationName, err)
	}
	for ns, labels := range map[string]map[string]string{"shop": {webhook.NamespaceLabel: webhook.NamespaceLabelEnabled}, "plain": nil} {
		if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reviews"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Registration takes effect asynchronously: retry the first creation briefly.
	var injected *corev1.Pod
	if err := poll(20*time.Second, func() bool {
		pod := kubePod("shop", "", nil)
		pod.GenerateName = "reviews-" // as a ReplicaSet names its pods
		p, err := c.Client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{})
		if err == nil && agentContainers(p) == 1 {
			injected = p
			return true
		}
		return false
	}); err != nil {
		t.Fatal("no pod created in a labelled namespace was injected")
	}
	if injected.Annotations[webhook.StatusAnnotation] == "" {
		t.Errorf("injected pod has no %s annotation", webhook.StatusAnnotation)
	}
	var audience string
	for _, v := range injected.Spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	if audience != "palisade" {
		t.Errorf("injected pod's projected token audience %q, want palisade", audience)
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want int
	}{
		{"unlabelled namespace", kubePod("plain", "plain-pod", nil), 0},
		{"opted out", kubePod("shop", "opted-out", map[string]string{webhook.InjectKey: "false"}), 0},
		{"already injected, applied again", func() *corev1.Pod {
			p := injected.DeepCopy()
			p.ObjectMeta = metav1.ObjectMeta{Name: "again", Namespace: "shop", Annotations: injected.Annotations}
			return p
		}(), 1},
	} {
		p, err := c.Client.CoreV1().Pods(tc.pod.Namespace).Create(ctx, tc.pod, metav1.CreateOptions{})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := agentContainers(p); got != tc.want {
			t.Errorf("%s: %d palisade-agent containers, want %d", tc.name, got, tc.want)
		}
	}

	// Invalid configuration is refused at kubectl apply, naming the field.
	for _, tc := range []struct{ name, yaml, want string }{
		{"VirtualService without a destination host", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {subset: v1}
`, "spec.http[0].route[0].destination.host"},
		{"RegoPolicy that does not compile", `apiVersion: policy.palisade.dev/v1alpha1
kind: RegoPolicy
metadata: {name: broken, namespace: default}
spec:
  rego: |
    package x

    allow if {
      input.attributes.request.http.method ==
    }
`, "spec.rego: line"},
	} {
		out, err := c.Kubectl(t, tc.yaml, "apply", "-f", "-")
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: kubectl apply = %v\n%s\nwant a refusal naming %s", tc.name, err, out, tc.want)
		} else {
			t.Logf("%s refused: %s", tc.name, strings.TrimSpace(out))
		}
	}

	// A pod's service-account token (audience palisade) gets exactly its identity.
	token := func(audience string) string {
		req, err := c.Client.CoreV1().ServiceAccounts("shop").CreateToken(ctx, "reviews", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return req.Status.Token
	}
	dir := t.TempDir()
	writeFile(t, dir, "token", token("palisade"))
	a := runAgent(t, d, dir, "spiffe://cluster.local/ns/shop/sa/reviews", filepath.Join(dir, "token"), time.Hour)
	if err := poll(20*time.Second, func() bool { return a.leaf() != nil }); err != nil {
		t.Fatalf("the agent with the service-account token got no certificate:\n%s", a.out.String())
	}
	if uris := a.leaf().URIs; len(uris) != 1 || uris[0].String() != "spiffe://cluster.local/ns/shop/sa/reviews" {
		t.Errorf("certificate URIs %v, want exactly spiffe://cluster.local/ns/shop/sa/reviews", uris)
	}
	for name, tc := range map[string]struct{ id, token string }{
		"another identity": {"spiffe://cluster.local/ns/shop/sa/ratings", token("palisade")},
		"another audience": {"spiffe://cluster.local/ns/shop/sa/reviews", token("vault")},
	} {
		dir := t.TempDir()
		writeFile(t, dir, "token", tc.token)
		refused := runAgent(t, d, dir, tc.id, filepath.Join(dir, "token"), time.Hour)
		time.Sleep(3 * time.Second) // the agent retries; it must never get a certificate
		if refused.leaf() != nil {
			t.Errorf("%s: the agent got a certificate", name)
		}
	}
	if !strings.Contains(d.Output(), "rejected") {
		t.Errorf("palisaded did not log the refused token")
	}
}

// TestInstallArgsAreFlags: the palisaded binary accepts every argument the install
// manifests' Deployment passes it (a renamed flag would otherwise surface only as a
// crash-looping pod).
func TestInstallArgsAreFlags(t *testing.T) {
	t.Parallel()
	objs, err := deploy.Objects(deploy.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			a, _, _ := unstructured.NestedStringSlice(c.(map[string]any), "args")
			args = append(args, a...)
		}
	}
	if !slices.Contains(args, "--source=kubernetes") {
		t.Fatalf("the Deployment's args %v do not select the Kubernetes source", args)
	}
	// Past flag parsing, palisaded stops at the missing kubeconfig (exit 1, not the
	// usage error's 2).
	cmd := exec.Command(palisadedBin, append(args, "--kubeconfig", filepath.Join(t.TempDir(), "missing"), "--data-dir", t.TempDir())...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "kubeconfig") {
		t.Fatalf("palisaded %v: %v\n%s\nwant exit 1 about the kubeconfig", args, err, out)
	}
}
