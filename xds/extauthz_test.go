package xds_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

// inboundOutcome is what a sidecar does with an HTTP request that reaches its inbound
// side: the chain that takes the connection, its network filter, the HTTP filters in
// order (none for a TCP proxy), the cluster it is forwarded to, and the context
// extensions ext_authz sends ("namespace labels", "" when there are none).
type inboundOutcome struct {
	chain, filter, httpFilters, cluster, extensions string
}

// simulateInboundHTTP follows an HTTP request through the virtualInbound listener:
// the filter chain as inboundChain picks it then, for an HTTP connection manager,
// its inline route configuration (virtual host by Host, first matching route) and
// the ext_authz settings in force for the route, the most specific first (route,
// virtual host, route configuration), as Envoy merges per-filter configuration.
func simulateInboundHTTP(t *testing.T, res *xds.Resources, port uint32, tls bool, r request) inboundOutcome {
	t.Helper()
	fc := inboundChain(t, res, port, tls)
	if fc == nil {
		return inboundOutcome{chain: "(none)"}
	}
	f := fc.Filters[0]
	out := inboundOutcome{chain: fc.Name, filter: f.Name}
	if f.Name == "envoy.filters.network.tcp_proxy" {
		var p tcpproxy.TcpProxy
		if err := f.GetTypedConfig().UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		out.cluster = p.GetCluster()
		return out
	}
	var m hcm.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, hf := range m.HttpFilters {
		names = append(names, hf.Name)
		if hf.Name == "envoy.filters.http.ext_authz" {
			checkExtAuthzFilter(t, fc.Name, hf)
		}
	}
	out.httpFilters = strings.Join(names, ",")
	rc := m.GetRouteConfig()
	if rc == nil {
		t.Fatalf("chain %s: inbound HTTP connection manager without an inline route configuration", fc.Name)
	}
	vh := virtualHost(rc, r.host)
	if vh == nil {
		return out
	}
	for _, rt := range vh.Routes {
		if !routeMatches(rt.Match, r) {
			continue
		}
		out.cluster = rt.GetRoute().GetCluster()
		if rt.GetRoute().GetTimeout() == nil || rt.GetRoute().GetTimeout().AsDuration() != 0 {
			t.Errorf("chain %s: route %s has timeout %v, want none (0s), as the TCP proxy had", fc.Name, rt.Name, rt.GetRoute().GetTimeout())
		}
		for _, per := range []map[string]*anypb.Any{rt.TypedPerFilterConfig, vh.TypedPerFilterConfig, rc.TypedPerFilterConfig} {
			a := per["envoy.filters.http.ext_authz"]
			if a == nil {
				continue
			}
			var pr extauthz.ExtAuthzPerRoute
			if err := a.UnmarshalTo(&pr); err != nil {
				t.Fatal(err)
			}
			if pr.GetDisabled() {
				t.Errorf("chain %s: ext_authz disabled for route %s", fc.Name, rt.Name)
			}
			ext := pr.GetCheckSettings().GetContextExtensions()
			out.extensions = ext["palisade.workload.namespace"] + " " + ext["palisade.workload.labels"]
			break
		}
		return out
	}
	return out
}

// checkExtAuthzFilter checks the settings the policy engine relies on: the gRPC
// service on the ext_authz cluster, API v3, failing closed with 403, and up to 8 KiB
// of the body sent along.
func checkExtAuthzFilter(t *testing.T, chain string, hf *hcm.HttpFilter) {
	t.Helper()
	var c extauthz.ExtAuthz
	if err := hf.GetTypedConfig().UnmarshalTo(&c); err != nil {
		t.Fatal(err)
	}
	body := c.GetWithRequestBody()
	switch {
	case c.GetGrpcService().GetEnvoyGrpc().GetClusterName() != xds.ExtAuthzClusterName:
		t.Errorf("chain %s: ext_authz asks %v, want cluster %s", chain, c.GetGrpcService(), xds.ExtAuthzClusterName)
	case c.GetTransportApiVersion().String() != "V3":
		t.Errorf("chain %s: ext_authz transport API %v", chain, c.GetTransportApiVersion())
	case c.GetFailureModeAllow():
		t.Errorf("chain %s: ext_authz fails open", chain)
	case c.GetStatusOnError().GetCode() != typev3.StatusCode_Forbidden:
		t.Errorf("chain %s: ext_authz answers %v on error, want 403", chain, c.GetStatusOnError())
	case body.GetMaxRequestBytes() != 8192 || !body.GetAllowPartialMessage():
		t.Errorf("chain %s: ext_authz body settings %v", chain, body)
	case c.GetIncludePeerCertificate():
		t.Errorf("chain %s: ext_authz sends the peer certificate", chain)
	}
}

// The sidecar of a workload that a CUSTOM AuthorizationPolicy or a RegoPolicy
// selects sends each HTTP request to a port it serves HTTP on through ext_authz
// before the router, telling the ext_authz server the workload's namespace and
// labels, and then to the application; its TCP ports, and every port of the
// workloads no such policy selects, are passed through as before.
func TestSidecarExtAuthzSimulation(t *testing.T) {
	data, err := os.ReadFile("testdata/in/authz.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := config.Decode("authz.yaml", data)
	snap := mesh.Build(1, objs)
	generate := func(ns string, labels map[string]string, ips ...string) *xds.Resources {
		return xds.Generate(snap.ViewFor(ns), xds.TargetFor(snap, &mesh.Proxy{Kind: mesh.KindSidecar, Namespace: ns, Labels: labels, IPs: ips}), xds.Options{})
	}
	reviews := map[string]string{"app": "reviews", "version": "v1", mesh.TLSModeLabel: mesh.TLSModeIstio}
	const (
		tcp        = "envoy.filters.network.tcp_proxy"
		http       = "envoy.filters.network.http_connection_manager"
		authzFirst = "envoy.filters.http.ext_authz,envoy.filters.http.router"
		app        = xds.InboundPassthroughClusterName
		reviewsExt = "default app=reviews,security.istio.io/tlsMode=istio,version=v1"
	)
	req := request{host: "reviews.default.svc.cluster.local", path: "/admin/users", headers: map[string]string{"content-type": "application/json"}}
	for _, tc := range []struct {
		name string
		res  *xds.Resources
		port uint32
		tls  bool
		want inboundOutcome
	}{
		{"selected, HTTP port, mTLS", generate("default", reviews, "10.0.1.1"), 9080, true,
			inboundOutcome{"virtualInbound-mtls-9080", http, authzFirst, app, reviewsExt}},
		{"selected, HTTP port, plaintext (port PERMISSIVE)", generate("default", reviews, "10.0.1.1"), 9080, false,
			inboundOutcome{"virtualInbound-plaintext-9080", http, authzFirst, app, reviewsExt}},
		{"selected, gRPC port, mTLS", generate("default", reviews, "10.0.1.1"), 9090, true,
			inboundOutcome{"virtualInbound-mtls-9090", http, authzFirst, app, reviewsExt}},
		{"selected, gRPC port, plaintext refused (STRICT)", generate("default", reviews, "10.0.1.1"), 9090, false,
			inboundOutcome{chain: "(none)"}},
		{"selected, TCP port", generate("default", reviews, "10.0.1.1"), 5432, true,
			inboundOutcome{chain: "virtualInbound-mtls", filter: tcp, cluster: app}},
		{"selected, port no service declares", generate("default", reviews, "10.0.1.1"), 7000, true,
			inboundOutcome{chain: "virtualInbound-mtls", filter: tcp, cluster: app}},
		{"selected, HTTP served on another target port", generate("default", map[string]string{"app": "reviews", "version": "v2"}, "10.0.1.2"), 8080, true,
			inboundOutcome{"virtualInbound-mtls-8080", http, authzFirst, app, "default app=reviews,version=v2"}},
		{"selected by a RegoPolicy", generate("default", map[string]string{"app": "ratings"}, "10.0.2.1"), 9080, false,
			inboundOutcome{"virtualInbound-plaintext-9080", http, authzFirst, app, "default app=ratings"}},
		{"selected by a namespace-wide RegoPolicy, mTLS DISABLEd", generate("team-a", map[string]string{"app": "pay"}, "10.1.0.1"), 8080, false,
			inboundOutcome{"virtualInbound-plaintext-8080", http, authzFirst, app, "team-a app=pay"}},
		{"selected without INSTANCE_IPS: no port known to be HTTP", generate("default", reviews), 9080, false,
			inboundOutcome{chain: "virtualInbound-plaintext-9080", filter: tcp, cluster: app}},
		{"selected, TCP service only", generate("default", map[string]string{"app": "db"}, "10.0.4.1"), 5432, false,
			inboundOutcome{chain: "virtualInbound-plaintext", filter: tcp, cluster: app}},
		{"not selected (a DENY policy only)", generate("default", map[string]string{"app": "details"}, "10.0.3.1"), 9080, false,
			inboundOutcome{chain: "virtualInbound-plaintext", filter: tcp, cluster: app}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := simulateInboundHTTP(t, tc.res, tc.port, tc.tls, req); got != tc.want {
				t.Errorf("port %d (TLS %v):\n got %+v\nwant %+v", tc.port, tc.tls, got, tc.want)
			}
			checkConsistent(t, tc.name, tc.res) // the ext_authz cluster is there if and only if used
		})
	}
}

func findCluster(res *xds.Resources, name string) *cluster.Cluster {
	for _, c := range res.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// The ext_authz cluster reaches Options.ExtAuthzAddress, 127.0.0.1:9191 by default,
// over HTTP/2; Validate rejects an address that is not IP:PORT.
func TestExtAuthzCluster(t *testing.T) {
	data, err := os.ReadFile("testdata/in/authz.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := config.Decode("authz.yaml", data)
	snap := mesh.Build(1, objs)
	target := xds.TargetFor(snap, &mesh.Proxy{Namespace: "default", Labels: map[string]string{"app": "ratings"}, IPs: []string{"10.0.2.1"}})
	if !target.ExtAuthz.Enabled() || target.ExtAuthz.Ports != "9080" || target.ExtAuthz.Labels != "app=ratings" {
		t.Fatalf("target %+v: want ext_authz on port 9080 for app=ratings", target.ExtAuthz)
	}
	for _, tc := range []struct{ address, want string }{
		{"", "127.0.0.1:9191"},
		{"10.1.2.3:9000", "10.1.2.3:9000"},
		{"[::1]:9191", "::1:9191"},
	} {
		o := xds.Options{ExtAuthzAddress: tc.address}
		if err := o.Validate(); err != nil {
			t.Errorf("Validate(%q): %v", tc.address, err)
		}
		c := findCluster(xds.Generate(snap.ViewFor("default"), target, o), xds.ExtAuthzClusterName)
		if c == nil {
			t.Fatalf("no %s cluster", xds.ExtAuthzClusterName)
		}
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if got := sa.GetAddress() + ":" + strconv.Itoa(int(sa.GetPortValue())); got != tc.want {
			t.Errorf("address %q: cluster reaches %s, want %s", tc.address, got, tc.want)
		}
		if c.GetType() != cluster.Cluster_STATIC || c.GetConnectTimeout().AsDuration() != time.Second || c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] == nil {
			t.Errorf("cluster %v: want STATIC, 1s connect timeout, HTTP/2", c)
		}
	}
	for _, bad := range []string{"localhost:9191", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999"} {
		if err := (xds.Options{ExtAuthzAddress: bad}).Validate(); err == nil {
			t.Errorf("Validate(%q) accepted it", bad)
		}
	}
	// A proxyless workload is never guarded: grpc-go has no ext_authz filter.
	if pl := xds.TargetFor(snap, &mesh.Proxy{Kind: mesh.KindProxyless, Namespace: "default", Labels: map[string]string{"app": "ratings"}, IPs: []string{"10.0.2.1"}}); pl.ExtAuthz.Enabled() {
		t.Errorf("proxyless target %+v has ext_authz", pl.ExtAuthz)
	}
}
