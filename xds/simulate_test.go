package xds_test

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

// request is an outbound call from a sidecar's application, as the capture listener
// hands it over: original destination, then (for HTTP) Host, path and headers.
type request struct {
	dest    string // IP:PORT
	host    string
	path    string
	headers map[string]string
}

// outcome is where Envoy would send it: the filter chain and route configuration
// that matched, and the clusters with their weights ("cluster" alone: weight 100).
type outcome struct {
	chain, routeConfig, route string
	clusters                  string // "c1=80,c2=20" or "c"
}

// simulate follows a request through sidecar resources as Envoy would: the listener
// of the destination port, the filter chain with the most specific address match
// (else the one without a match), then for HTTP the route configuration, the virtual
// host by domain (exact before "*") and the first matching route. It covers what the
// generators emit, not all of Envoy.
func simulate(t *testing.T, res *xds.Resources, r request) outcome {
	t.Helper()
	ap := netip.MustParseAddrPort(r.dest)
	var l *listener.Listener
	for _, c := range res.Listeners {
		if sa := c.GetAddress().GetSocketAddress(); sa != nil && sa.GetPortValue() == uint32(ap.Port()) && c.Name != xds.VirtualOutboundListenerName {
			l = c
		}
	}
	if l == nil {
		return outcome{chain: "virtualOutbound", clusters: xds.PassthroughClusterName}
	}
	var chain *listener.FilterChain
	best := -1
	for _, fc := range l.FilterChains {
		ranges := fc.GetFilterChainMatch().GetPrefixRanges()
		if len(ranges) == 0 && best < 0 {
			chain = fc
		}
		for _, cr := range ranges {
			pfx := netip.PrefixFrom(netip.MustParseAddr(cr.AddressPrefix), int(cr.GetPrefixLen().GetValue()))
			if pfx.Contains(ap.Addr()) && pfx.Bits() > best {
				chain, best = fc, pfx.Bits()
			}
		}
	}
	if chain == nil {
		return outcome{chain: "(none)"}
	}
	out := outcome{chain: chain.Name}
	f := chain.Filters[0]
	if f.Name == "envoy.filters.network.tcp_proxy" {
		var p tcpproxy.TcpProxy
		if err := f.GetTypedConfig().UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		out.clusters = p.GetCluster()
		return out
	}
	var m hcm.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	out.routeConfig = m.GetRds().GetRouteConfigName()
	var rc *route.RouteConfiguration
	for _, c := range res.Routes {
		if c.Name == out.routeConfig {
			rc = c
		}
	}
	if rc == nil {
		t.Fatalf("route configuration %q is not generated", out.routeConfig)
	}
	vh := virtualHost(rc, r.host)
	if vh == nil {
		return out // 404
	}
	for _, rt := range vh.Routes {
		if routeMatches(rt.Match, r) {
			out.route = rt.Name
			a := rt.GetRoute()
			if c := a.GetCluster(); c != "" {
				out.clusters = c
			} else {
				var parts []string
				for _, wc := range a.GetWeightedClusters().GetClusters() {
					parts = append(parts, fmt.Sprintf("%s=%d", wc.Name, wc.GetWeight().GetValue()))
				}
				out.clusters = strings.Join(parts, ",")
			}
			return out
		}
	}
	return out
}

func virtualHost(rc *route.RouteConfiguration, host string) *route.VirtualHost {
	for _, vh := range rc.VirtualHosts {
		if slices.Contains(vh.Domains, host) {
			return vh
		}
	}
	for _, vh := range rc.VirtualHosts {
		if slices.Contains(vh.Domains, "*") {
			return vh
		}
	}
	return nil
}

func routeMatches(m *route.RouteMatch, r request) bool {
	switch {
	case m.GetPrefix() != "":
		if !strings.HasPrefix(r.path, m.GetPrefix()) {
			return false
		}
	case m.GetPath() != "":
		if r.path != m.GetPath() {
			return false
		}
	case m.GetSafeRegex() != nil:
		if !regexp.MustCompile("^(?:" + m.GetSafeRegex().Regex + ")$").MatchString(r.path) {
			return false
		}
	}
	for _, h := range m.Headers {
		v, present := r.headers[h.Name]
		ok := present
		if sm := h.GetStringMatch(); sm != nil {
			ok = present && stringMatches(sm, v)
		}
		if ok == h.InvertMatch {
			return false
		}
	}
	return true
}

func stringMatches(sm *matcher.StringMatcher, v string) bool {
	switch {
	case sm.GetSafeRegex() != nil:
		return regexp.MustCompile("^(?:" + sm.GetSafeRegex().Regex + ")$").MatchString(v)
	case sm.GetPrefix() != "":
		return strings.HasPrefix(v, sm.GetPrefix())
	}
	return v == sm.GetExact()
}

// Simulated requests through a sidecar's generated configuration land where Istio's
// semantics say: by destination address for services with a VIP, by Host header for
// the others, through the VirtualService's matches and weights.
func TestSidecarSimulation(t *testing.T) {
	data, err := os.ReadFile("testdata/in/vips.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := config.Decode("vips.yaml", data)
	res := xds.Generate(mesh.Build(1, objs).ViewFor("default"), xds.Target{Kind: mesh.KindSidecar}, xds.Options{})
	reviews := "reviews.default.svc.cluster.local"
	split := "outbound|9080|v1|" + reviews + "=90,outbound|9080|v2|" + reviews + "=10"
	for _, tc := range []struct {
		name string
		req  request
		want outcome
	}{
		{"VIP, any Host: the service's own route configuration",
			request{dest: "240.0.0.1:9080", host: "whatever", path: "/"},
			outcome{chain: reviews + ":9080", routeConfig: reviews + ":9080", clusters: split}},
		{"VIP, header match",
			request{dest: "240.0.0.1:9080", host: "reviews", path: "/", headers: map[string]string{"end-user": "jason"}},
			outcome{chain: reviews + ":9080", routeConfig: reviews + ":9080", clusters: "outbound|9080|v2|" + reviews}},
		{"by Host header, to the service whose VIP was taken",
			request{dest: "10.9.9.9:9080", host: "shadow:9080", path: "/"},
			outcome{chain: "http", routeConfig: "9080", route: "default", clusters: "outbound|9080||shadow.default.svc.cluster.local"}},
		{"by Host header, a service with a VIP reached by name",
			request{dest: "10.9.9.9:9080", host: "reviews.default", path: "/", headers: map[string]string{"end-user": "bob"}},
			outcome{chain: "http", routeConfig: "9080", route: "allow_any", clusters: xds.PassthroughClusterName}},
		{"service without any VIP",
			request{dest: "10.9.9.9:9080", host: "ratings", path: "/"},
			outcome{chain: "http", routeConfig: "9080", route: "default", clusters: "outbound|9080||ratings.default.svc.cluster.local"}},
		{"unknown host passes through",
			request{dest: "10.9.9.9:9080", host: "example.org", path: "/"},
			outcome{chain: "http", routeConfig: "9080", route: "allow_any", clusters: xds.PassthroughClusterName}},
		{"TCP service by VIP",
			request{dest: "240.0.0.9:9080"},
			outcome{chain: "outbound|9080||mysql.default.svc.cluster.local", clusters: "outbound|9080||mysql.default.svc.cluster.local"}},
		{"a port no service uses",
			request{dest: "10.9.9.9:5000"},
			outcome{chain: "virtualOutbound", clusters: xds.PassthroughClusterName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := simulate(t, res, tc.req); got != tc.want {
				t.Errorf("%+v\n got %+v\nwant %+v", tc.req, got, tc.want)
			}
		})
	}
}

// inboundChain follows a connection redirected to a sidecar's virtualInbound
// listener as Envoy picks its filter chain: first by destination port (chains naming
// the port win over those naming none), then by transport protocol as the TLS
// inspector reports it ("tls" or "raw_buffer"; a chain naming the protocol wins over
// one naming none). It returns nil when no chain matches and Envoy closes the
// connection, and checks the transport socket of a matched chain.
func inboundChain(t *testing.T, res *xds.Resources, port uint32, tls bool) *listener.FilterChain {
	t.Helper()
	var l *listener.Listener
	for _, c := range res.Listeners {
		if c.Name == xds.VirtualInboundListenerName {
			l = c
		}
	}
	if l == nil {
		t.Fatal("no virtualInbound listener")
	}
	var byPort, anyPort []*listener.FilterChain
	for _, fc := range l.FilterChains {
		switch p := fc.GetFilterChainMatch().GetDestinationPort(); {
		case p == nil:
			anyPort = append(anyPort, fc)
		case p.GetValue() == port:
			byPort = append(byPort, fc)
		}
	}
	candidates := anyPort
	if len(byPort) > 0 {
		candidates = byPort
	}
	transport := "raw_buffer"
	if tls {
		transport = "tls"
	}
	var exact, wildcard []*listener.FilterChain
	for _, fc := range candidates {
		switch fc.GetFilterChainMatch().GetTransportProtocol() {
		case transport:
			exact = append(exact, fc)
		case "":
			wildcard = append(wildcard, fc)
		}
	}
	matched := exact
	if len(matched) == 0 {
		matched = wildcard
	}
	switch len(matched) {
	case 0:
		return nil
	case 1:
	default:
		t.Fatalf("port %d, tls %v: several chains match: Envoy rejects such a listener", port, tls)
	}
	fc := matched[0]
	if ts := fc.GetTransportSocket(); ts != nil {
		var ctx tlsv3.DownstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
			t.Fatal(err)
		}
		if !ctx.GetRequireClientCertificate().GetValue() {
			t.Errorf("chain %s terminates TLS without requiring a client certificate", fc.Name)
		}
		if !tls {
			t.Errorf("chain %s terminates TLS on a plaintext connection", fc.Name)
		}
	}
	return fc
}

// simulateInbound returns the name of the chain a connection to a sidecar's inbound
// port lands on (inboundChain), or "(none)", and checks that a TCP chain forwards to
// the application.
func simulateInbound(t *testing.T, res *xds.Resources, port uint32, tls bool) string {
	t.Helper()
	fc := inboundChain(t, res, port, tls)
	if fc == nil {
		return "(none)"
	}
	if f := fc.Filters[0]; f.Name == "envoy.filters.network.tcp_proxy" {
		var p tcpproxy.TcpProxy
		if err := f.GetTypedConfig().UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		if want := xds.InboundPassthroughClusterName; port != xds.VirtualInboundPort && p.GetCluster() != want {
			t.Errorf("chain %s forwards to %s, want %s", fc.Name, p.GetCluster(), want)
		}
	}
	return fc.Name
}

// simulateUpstream says how a sidecar connects to an endpoint of a cluster: "mtls"
// or "plaintext", following the cluster's transport socket or, for auto mTLS, its
// transport socket matches against the endpoint's metadata (the first whose match
// is a subset of the metadata, as Envoy picks them).
func simulateUpstream(t *testing.T, res *xds.Resources, clusterName, address string) string {
	t.Helper()
	var c *cluster.Cluster
	for _, x := range res.Clusters {
		if x.Name == clusterName {
			c = x
		}
	}
	var md map[string]*structpb.Value
	found := false
	for _, cla := range res.Endpoints {
		if cla.ClusterName != clusterName {
			continue
		}
		for _, le := range cla.Endpoints {
			for _, e := range le.LbEndpoints {
				if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == address {
					md = e.GetMetadata().GetFilterMetadata()["envoy.transport_socket_match"].GetFields()
					found = true
				}
			}
		}
	}
	if c == nil || !found {
		t.Fatalf("no cluster %s with endpoint %s", clusterName, address)
	}
	socket := c.GetTransportSocket()
	for _, m := range c.GetTransportSocketMatches() {
		matches := true
		for k, v := range m.GetMatch().GetFields() {
			if md[k].GetStringValue() != v.GetStringValue() {
				matches = false
			}
		}
		if matches {
			socket = m.GetTransportSocket()
			break
		}
	}
	if socket.GetName() == "envoy.transport_sockets.tls" {
		return "mtls"
	}
	return "plaintext"
}

// Connections to a sidecar's inbound listener land on the filter chain the
// workload's PeerAuthentication mode calls for, or on none (plaintext where mTLS is
// STRICT); connections from a sidecar use mutual TLS to exactly the endpoints that
// take it.
func TestSidecarMTLSSimulation(t *testing.T) {
	data, err := os.ReadFile("testdata/in/mtls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := config.Decode("mtls.yaml", data)
	snap := mesh.Build(1, objs)
	generate := func(ns string, labels map[string]string) *xds.Resources {
		view := snap.ViewFor(ns)
		return xds.Generate(view, xds.TargetFor(snap, &mesh.Proxy{Kind: mesh.KindSidecar, Namespace: ns, Labels: labels}), xds.Options{})
	}
	reviews := map[string]string{"app": "reviews", "version": "v1"}
	ratings := map[string]string{"app": "ratings"}
	details := map[string]string{"app": "details"}
	for _, tc := range []struct {
		name   string
		ns     string
		labels map[string]string
		port   uint32
		tls    bool
		want   string
	}{
		{"mesh-wide STRICT: mTLS", "default", nil, 9080, true, "virtualInbound-mtls"},
		{"mesh-wide STRICT: plaintext refused", "default", nil, 9080, false, "(none)"},
		{"to the listener itself", "default", nil, xds.VirtualInboundPort, false, "virtualInbound-blackhole"},
		{"namespace UNSET inherits STRICT", "legacy", nil, 9080, false, "(none)"},
		{"namespace PERMISSIVE: plaintext", "team-a", nil, 9080, false, "virtualInbound-plaintext"},
		{"namespace PERMISSIVE: mTLS", "team-a", nil, 9080, true, "virtualInbound-mtls"},
		{"workload DISABLE: plaintext", "default", details, 9080, false, "virtualInbound-plaintext"},
		{"workload DISABLE: TLS passed through", "default", details, 9080, true, "virtualInbound-plaintext"},
		{"workload UNSET inherits STRICT", "default", reviews, 8080, false, "(none)"},
		{"port PERMISSIVE: plaintext", "default", reviews, 9080, false, "virtualInbound-plaintext-9080"},
		{"port PERMISSIVE: mTLS", "default", reviews, 9080, true, "virtualInbound-mtls-9080"},
		{"port DISABLE: plaintext", "default", reviews, 9443, false, "virtualInbound-plaintext-9443"},
		{"port DISABLE: TLS passed through", "default", reviews, 9443, true, "virtualInbound-plaintext-9443"},
		{"port UNSET inherits the workload's STRICT", "default", reviews, 9090, false, "(none)"},
		{"other port: the workload's mode", "default", reviews, 8080, true, "virtualInbound-mtls"},
		{"port STRICT in a PERMISSIVE namespace: plaintext refused", "team-a", ratings, 9080, false, "(none)"},
		{"port STRICT in a PERMISSIVE namespace: mTLS", "team-a", ratings, 9080, true, "virtualInbound-mtls-9080"},
		{"port STRICT in a PERMISSIVE namespace: other ports", "team-a", ratings, 8080, false, "virtualInbound-plaintext"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := simulateInbound(t, generate(tc.ns, tc.labels), tc.port, tc.tls); got != tc.want {
				t.Errorf("%s %v: connection to port %d (TLS %v) lands on %s, want %s", tc.ns, tc.labels, tc.port, tc.tls, got, tc.want)
			}
		})
	}

	res := generate("default", nil)
	for _, tc := range []struct {
		cluster, address, want string
	}{
		{"outbound|9080||reviews.default.svc.cluster.local", "10.0.1.1", "mtls"},      // tlsMode=istio
		{"outbound|9080||reviews.default.svc.cluster.local", "10.0.1.2", "plaintext"}, // no label
		{"outbound|9080|v1|reviews.default.svc.cluster.local", "10.0.1.1", "mtls"},
		{"outbound|9080||details.default.svc.cluster.local", "10.0.2.1", "plaintext"}, // its workload DISABLEs mTLS
		{"outbound|9080||ratings.team-a.svc.cluster.local", "10.0.3.2", "mtls"},
		{"outbound|5432||db.legacy-db.svc.cluster.local", "10.0.4.1", "plaintext"},  // namespace DISABLE
		{"outbound|8443||payments.example.com", "10.0.5.1", "mtls"},                 // ISTIO_MUTUAL
		{"outbound|8443|plain|payments.example.com", "10.0.5.1", "plaintext"},       // subset DISABLE
		{"outbound|6379||cache.default.svc.cluster.local", "10.0.6.1", "plaintext"}, // port DISABLE
		{"outbound|6380||cache.default.svc.cluster.local", "10.0.6.1", "mtls"},
		{"outbound|443||api.partner.example", "192.0.2.10", "plaintext"}, // MESH_EXTERNAL
	} {
		if got := simulateUpstream(t, res, tc.cluster, tc.address); got != tc.want {
			t.Errorf("%s to %s: %s, want %s", tc.cluster, tc.address, got, tc.want)
		}
	}
}
