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
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/test/meshgen"
	"github.com/palisade-mesh/palisade/xds"
	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

// withPolicies is snapshot with PeerAuthentications added (YAML documents).
func withPolicies(t testing.TB, version uint64, services, weightV2 int, policies ...string) *mesh.Snapshot {
	t.Helper()
	var b strings.Builder
	for i := range services {
		w := 20
		if i == 0 {
			w = weightV2
		}
		b.WriteString(meshgen.Service(i, w) + "---\n")
	}
	for _, p := range policies {
		b.WriteString(p + "---\n")
	}
	objs, diags := config.Decode("test.yaml", []byte(b.String()))
	if len(diags) > 0 {
		t.Fatalf("test config: %v", diags)
	}
	return mesh.Build(version, objs)
}

func policy(name, selector, mode string) string {
	sel := ""
	if selector != "" {
		k, v, _ := strings.Cut(selector, "=")
		sel = ", selector: {matchLabels: {" + k + ": " + v + "}}"
	}
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: " + name + ", namespace: default}\nspec: {mtls: {mode: " + mode + "}" + sel + "}\n"
}

func labelledNode(id string, kind mesh.ProxyKind, labels map[string]any) *core.Node {
	n := node(id, kind)
	n.Metadata.Fields[xds.MetaLabels] = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{}})
	for k, v := range labels {
		n.Metadata.Fields[xds.MetaLabels].GetStructValue().Fields[k] = structpb.NewStringValue(v.(string))
	}
	return n
}

func unpackListener(t *testing.T, r *discovery.Resource) *listener.Listener {
	t.Helper()
	var l listener.Listener
	if err := r.GetResource().UnmarshalTo(&l); err != nil {
		t.Fatal(err)
	}
	return &l
}

func chainNames(l *listener.Listener) string {
	var out []string
	for _, fc := range l.FilterChains {
		out = append(out, fc.Name)
	}
	return strings.Join(out, ",")
}

// Proxies whose workloads no policy tells apart share one translation; a proxy
// selected by a workload-level policy gets its own.
func TestProxiesWithTheSamePolicyShareATranslation(t *testing.T) {
	c := xdsserver.NewCache(xdsserver.CacheConfig{})
	c.SetSnapshot(withPolicies(t, 1, 3, 20, policy("default", "", "STRICT"), policy("c", "app=c", "DISABLE")))
	resources := func(labels map[string]string) *xds.Resources {
		res, _, err := c.Resources(&mesh.Proxy{ID: "p", Namespace: "default", Kind: mesh.KindSidecar, Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	a, b := resources(map[string]string{"app": "a"}), resources(map[string]string{"app": "b"})
	if a != b {
		t.Error("two sidecars that no policy tells apart got two translations")
	}
	if c := resources(map[string]string{"app": "c"}); c == a {
		t.Error("a sidecar selected by a workload policy shares the translation of those it does not select")
	}
}

// A PeerAuthentication change sends a delta sidecar its new inbound listener and
// nothing else; a policy that starts selecting the proxy's workload moves it to a
// view of its own, whose listeners it then gets in full, and the next edit of that
// policy is again sent alone.
func TestPeerAuthenticationChangesSendTheInboundListener(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(withPolicies(t, 1, 5, 20))
	stream, send := openDelta(t, client)
	send(&discovery.DeltaDiscoveryRequest{Node: labelledNode("envoy", mesh.KindSidecar, map[string]any{"app": "a"}), TypeUrl: resource.ListenerType})
	full := recv(t, stream.Recv)
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: full.Nonce})

	inboundAfter := func(snap *mesh.Snapshot, wantAlone bool, wantChains string) {
		t.Helper()
		s.SetSnapshot(snap)
		resp := recv(t, stream.Recv)
		send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: resp.Nonce})
		var inbound *listener.Listener
		for _, r := range resp.Resources {
			if r.Name == xds.VirtualInboundListenerName {
				inbound = unpackListener(t, r)
			}
		}
		switch {
		case resp.TypeUrl != resource.ListenerType || inbound == nil:
			t.Fatalf("got %s with %d resources, not the inbound listener", resp.TypeUrl, len(resp.Resources))
		case wantAlone && len(resp.Resources) != 1:
			t.Errorf("%d listeners sent, want the inbound listener alone", len(resp.Resources))
		case !wantAlone && len(resp.Resources) != len(full.Resources):
			t.Errorf("%d listeners sent, want all %d", len(resp.Resources), len(full.Resources))
		}
		if got := chainNames(inbound); got != wantChains {
			t.Errorf("inbound chains %s, want %s", got, wantChains)
		}
	}
	inboundAfter(withPolicies(t, 2, 5, 20, policy("default", "", "STRICT")), true, "virtualInbound-blackhole,virtualInbound-mtls")
	inboundAfter(withPolicies(t, 3, 5, 20, policy("default", "", "STRICT"), policy("a", "app=a", "DISABLE")), false, "virtualInbound-blackhole,virtualInbound-plaintext")
	inboundAfter(withPolicies(t, 4, 5, 20, policy("default", "", "STRICT"), policy("a", "app=a", "PERMISSIVE")), true, "virtualInbound-blackhole,virtualInbound-mtls,virtualInbound-plaintext")
}

// A proxyless server's listener follows the PeerAuthentication of its port: it is
// sent again when the policy changes, and not for a change elsewhere.
func TestProxylessServerListenerFollowsPeerAuthentication(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(withPolicies(t, 1, 3, 20))
	stream, send := openDelta(t, client)
	name := "grpc/server?xds.resource.listening_address=127.0.0.1:9080"
	send(&discovery.DeltaDiscoveryRequest{Node: node("server", mesh.KindProxyless), TypeUrl: resource.ListenerType, ResourceNamesSubscribe: []string{name}})
	first := recv(t, stream.Recv)
	if len(first.Resources) != 1 || unpackListener(t, first.Resources[0]).FilterChains[0].TransportSocket != nil {
		t.Fatalf("first response: %v", first.Resources)
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: first.Nonce})
	routes := meshgen.Host(0) + ":9080"
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResourceNamesSubscribe: []string{routes}})
	rds := recv(t, stream.Recv)
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResponseNonce: rds.Nonce})

	s.SetSnapshot(withPolicies(t, 2, 3, 20, policy("default", "", "STRICT")))
	strict := recv(t, stream.Recv)
	if strict.TypeUrl != resource.ListenerType || len(strict.Resources) != 1 || unpackListener(t, strict.Resources[0]).FilterChains[0].TransportSocket == nil {
		t.Fatalf("after STRICT: %s %v, want the server listener with mutual TLS", strict.TypeUrl, strict.Resources)
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: strict.Nonce})

	// A routing change: the route is sent, the listener is not.
	s.SetSnapshot(withPolicies(t, 3, 3, 50, policy("default", "", "STRICT")))
	next := recv(t, stream.Recv)
	if next.TypeUrl != resource.RouteType {
		t.Fatalf("after a routing change got %s %v, want only the route", next.TypeUrl, next.Resources)
	}
}

// The same over state of the world.
func TestSotwServerListenerFollowsPeerAuthentication(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(withPolicies(t, 1, 3, 20))
	stream, err := client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	name := "grpc/server?xds.resource.listening_address=127.0.0.1:9080"
	req := &discovery.DiscoveryRequest{Node: node("server", mesh.KindProxyless), TypeUrl: resource.ListenerType, ResourceNames: []string{name}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	first := recv(t, stream.Recv)
	req.VersionInfo, req.ResponseNonce = first.VersionInfo, first.Nonce
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	s.SetSnapshot(withPolicies(t, 2, 3, 20, policy("default", "", "STRICT")))
	strict := recv(t, stream.Recv)
	var l listener.Listener
	if len(strict.Resources) != 1 || strict.Resources[0].UnmarshalTo(&l) != nil || l.FilterChains[0].TransportSocket == nil {
		t.Fatalf("after STRICT: %v, want the server listener with mutual TLS", strict.Resources)
	}
}
