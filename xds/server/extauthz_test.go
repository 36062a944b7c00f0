package server_test

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/xds"
	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

// regoPolicy is a RegoPolicy of namespace default selecting version=VERSION.
func regoPolicy(version string) string {
	return "apiVersion: policy.palisade.dev/v1alpha1\nkind: RegoPolicy\nmetadata: {name: v, namespace: default}\n" +
		"spec:\n  selector: {matchLabels: {version: " + version + "}}\n  rego: \"package x\\n\\nallow := true\\n\"\n"
}

func hasCluster(res *xds.Resources, name string) bool {
	for _, c := range res.Clusters {
		if c.Name == name {
			return true
		}
	}
	return false
}

// Proxies that the policy engine does not guard share their translation exactly as
// before, whatever their labels and IPs; a guarded proxy gets a translation of its
// own, which the proxies with the same labels and HTTP ports share.
func TestExtAuthzSplitsOnlyGuardedViews(t *testing.T) {
	c := xdsserver.NewCache(xdsserver.CacheConfig{ExtAuthzAddress: "10.9.9.9:9000"})
	c.SetSnapshot(withPolicies(t, 1, 3, 20, regoPolicy("v1")))
	resources := func(labels map[string]string, ips ...string) *xds.Resources {
		t.Helper()
		res, _, err := c.Resources(&mesh.Proxy{ID: "p", Namespace: "default", Kind: mesh.KindSidecar, Labels: labels, IPs: ips})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	base := resources(map[string]string{"app": "a"})
	for _, tc := range []struct {
		name   string
		labels map[string]string
		ips    []string
	}{
		{"not selected", map[string]string{"version": "v2"}, []string{"10.0.0.2"}},
		{"selected, without INSTANCE_IPS", map[string]string{"version": "v1"}, nil},
		{"selected, no service's endpoint", map[string]string{"version": "v1"}, []string{"192.0.2.1"}},
	} {
		if res := resources(tc.labels, tc.ips...); res != base {
			t.Errorf("%s: a proxy the policy engine does not guard got a translation of its own", tc.name)
		}
	}
	if hasCluster(base, xds.ExtAuthzClusterName) {
		t.Errorf("unguarded proxies get cluster %s", xds.ExtAuthzClusterName)
	}
	guarded := resources(map[string]string{"version": "v1"}, "10.0.0.1") // svc0 v1
	if guarded == base || !hasCluster(guarded, xds.ExtAuthzClusterName) {
		t.Fatal("a guarded proxy shares the unguarded translation")
	}
	if other := resources(map[string]string{"version": "v1"}, "10.0.1.1"); other != guarded { // svc1 v1: same labels and port
		t.Error("two guarded proxies with the same labels and HTTP ports got two translations")
	}
	if other := resources(map[string]string{"version": "v1", "pod": "x"}, "10.0.1.1"); other == guarded {
		t.Error("guarded proxies with different labels share a translation: the context extensions would be wrong")
	}
	for _, cl := range guarded.Clusters {
		if cl.Name == xds.ExtAuthzClusterName {
			if got := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress(); got != "10.9.9.9" {
				t.Errorf("ext_authz cluster reaches %s, want the configured 10.9.9.9", got)
			}
		}
	}
}

// A RegoPolicy that starts selecting a delta sidecar's workload moves it to the
// guarded view, whose listeners and clusters it gets; removing the policy moves it
// back.
func TestExtAuthzPolicyChangesReachDeltaSidecars(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(withPolicies(t, 1, 3, 20))
	n := labelledNode("envoy", mesh.KindSidecar, map[string]any{"version": "v1"})
	n.Metadata.Fields[xds.MetaInstanceIPs] = structpb.NewStringValue("10.0.0.1")
	stream, send := openDelta(t, client)
	inbound := func(n *core.Node, nonce string) (string, *discovery.DeltaDiscoveryResponse) {
		t.Helper()
		send(&discovery.DeltaDiscoveryRequest{Node: n, TypeUrl: resource.ListenerType, ResponseNonce: nonce})
		resp := recv(t, stream.Recv)
		for _, r := range resp.Resources {
			if r.Name == xds.VirtualInboundListenerName {
				return chainFilters(t, unpackListener(t, r)), resp
			}
		}
		t.Fatalf("no inbound listener in %d resources", len(resp.Resources))
		return "", nil
	}
	const (
		passthrough = "virtualInbound-blackhole:tcp_proxy,virtualInbound-mtls:tcp_proxy,virtualInbound-plaintext:tcp_proxy"
		guarded     = "virtualInbound-blackhole:tcp_proxy,virtualInbound-mtls-9080:http_connection_manager,virtualInbound-plaintext-9080:http_connection_manager,virtualInbound-mtls:tcp_proxy,virtualInbound-plaintext:tcp_proxy"
	)
	got, resp := inbound(n, "")
	if got != passthrough {
		t.Fatalf("before any policy: %s", got)
	}
	s.SetSnapshot(withPolicies(t, 2, 3, 20, regoPolicy("v1")))
	if got, resp = inbound(nil, resp.Nonce); got != guarded {
		t.Errorf("selected by a RegoPolicy: %s, want %s", got, guarded)
	}
	s.SetSnapshot(withPolicies(t, 3, 3, 20))
	if got, _ = inbound(nil, resp.Nonce); got != passthrough {
		t.Errorf("after the policy is removed: %s, want %s", got, passthrough)
	}
}

// chainFilters lists a listener's chains as NAME:FILTER (the last part of the name
// of its first network filter).
func chainFilters(t *testing.T, l *listener.Listener) string {
	t.Helper()
	var out []string
	for _, fc := range l.FilterChains {
		f := fc.Filters[0].Name
		out = append(out, fc.Name+":"+f[strings.LastIndex(f, ".")+1:])
	}
	return strings.Join(out, ",")
}
