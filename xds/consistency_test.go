package xds_test

import (
	"os"
	"path/filepath"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

// Every reference in a proxy's configuration resolves within it: RDS names of
// listeners (including proxyless API listeners, which go-control-plane's snapshot
// consistency check does not follow), clusters of routes (inline ones too) and TCP
// proxies, the ext_authz filter's gRPC cluster (palisade-ext-authz, which is there
// exactly when some listener uses it), and the load assignment of every EDS
// cluster. A dangling reference leaves a gRPC client waiting for a resource that
// never comes.
func TestGeneratedConfigIsConsistent(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/in/*.yaml")
	for _, in := range inputs {
		data, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		objs, _ := config.Decode(in, data)
		snap := mesh.Build(1, objs)
		for _, ns := range []string{"default", "team-a"} {
			for _, kind := range []mesh.ProxyKind{mesh.KindSidecar, mesh.KindProxyless} {
				for _, w := range goldenWorkloads(data) {
					res, _ := generateFor(t, snap, ns, kind, w, data)
					checkConsistent(t, in+"/"+ns+"/"+w.name+"/"+string(kind), res)
				}
			}
		}
	}
}

func checkConsistent(t *testing.T, name string, res *xds.Resources) {
	t.Helper()
	routes, clusters, assignments := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, r := range res.Routes {
		routes[r.Name] = true
	}
	for _, c := range res.Clusters {
		clusters[c.Name] = true
	}
	for _, a := range res.Endpoints {
		assignments[a.ClusterName] = true
	}
	for _, c := range res.Clusters {
		if c.GetEdsClusterConfig() != nil && !assignments[c.GetEdsClusterConfig().GetServiceName()] {
			t.Errorf("%s: EDS cluster %s has no load assignment", name, c.Name)
		}
	}
	checkRDS := func(l string, m *hcm.HttpConnectionManager) {
		if rds := m.GetRds(); rds != nil && !routes[rds.RouteConfigName] {
			t.Errorf("%s: listener %s refers to missing route configuration %s", name, l, rds.RouteConfigName)
		}
	}
	usedClusters := map[string]bool{}
	for _, l := range res.Listeners {
		if api := l.GetApiListener().GetApiListener(); api != nil {
			var m hcm.HttpConnectionManager
			if err := api.UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			checkRDS(l.Name, &m)
		}
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				for _, c := range checkFilter(t, name, l, f, checkRDS, clusters) {
					usedClusters[c] = true
				}
			}
		}
	}
	if clusters[xds.ExtAuthzClusterName] && !usedClusters[xds.ExtAuthzClusterName] {
		t.Errorf("%s: cluster %s is served but no listener uses it", name, xds.ExtAuthzClusterName)
	}
	checkRoutes(t, name, res.Routes, clusters)
}

// checkRoutes checks that routes send to existing clusters.
func checkRoutes(t *testing.T, name string, rcs []*route.RouteConfiguration, clusters map[string]bool) {
	t.Helper()
	for _, rc := range rcs {
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				var targets []string
				if c := r.GetRoute().GetCluster(); c != "" {
					targets = append(targets, c)
				}
				for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
					targets = append(targets, wc.Name)
				}
				for _, c := range targets {
					if !clusters[c] {
						t.Errorf("%s: route %s/%s/%s sends to missing cluster %s", name, rc.Name, vh.Name, r.Name, c)
					}
				}
			}
		}
	}
}

// checkFilter checks the references of a listener's network filter and returns the
// clusters its HTTP filters call (ext_authz).
func checkFilter(t *testing.T, name string, l *listener.Listener, f *listener.Filter, checkRDS func(string, *hcm.HttpConnectionManager), clusters map[string]bool) []string {
	t.Helper()
	var used []string
	switch f.Name {
	case "envoy.filters.network.http_connection_manager":
		var m hcm.HttpConnectionManager
		if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		checkRDS(l.Name, &m)
		if rc := m.GetRouteConfig(); rc != nil {
			checkRoutes(t, name+"/"+l.Name, []*route.RouteConfiguration{rc}, clusters)
		}
		for _, hf := range m.HttpFilters {
			if hf.Name != "envoy.filters.http.ext_authz" {
				continue
			}
			var c extauthz.ExtAuthz
			if err := hf.GetTypedConfig().UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			target := c.GetGrpcService().GetEnvoyGrpc().GetClusterName()
			if !clusters[target] {
				t.Errorf("%s: listener %s: ext_authz calls missing cluster %q", name, l.Name, target)
			}
			used = append(used, target)
		}
	case "envoy.filters.network.tcp_proxy":
		var p tcpproxy.TcpProxy
		if err := f.GetTypedConfig().UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		if !clusters[p.GetCluster()] {
			t.Errorf("%s: listener %s forwards to missing cluster %s", name, l.Name, p.GetCluster())
		}
	}
	return used
}
