package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-mesh/palisade/test/backend"
	"github.com/palisade-mesh/palisade/test/kube"
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
			Spec: corev1.PodSpec{ServiceAccountName: "reviews", Containers: []corev1.Container{{Name: "app", Image: "reviews:" + version}}},
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
