package xds_test

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

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
	res := xds.Generate(mesh.Build(1, objs).ViewFor("default"), mesh.KindSidecar)
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
