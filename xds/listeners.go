package xds

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/palisade-mesh/palisade/mesh"
)

// Well-known filter names.
const (
	hcmFilterName      = "envoy.filters.network.http_connection_manager"
	tcpProxyFilterName = "envoy.filters.network.tcp_proxy"
	routerFilterName   = "envoy.filters.http.router"
	origDstFilterName  = "envoy.filters.listener.original_dst"
)

// VirtualOutboundListenerName is the sidecar's capture listener, as in Istio.
const (
	VirtualOutboundListenerName = "virtualOutbound"
	VirtualOutboundPort         = 15001
)

// mustAny packs a message. Packing a generated message only fails on a programming
// error, so it panics rather than make every builder return an error. Maps are
// marshalled in key order, so that the same message always packs into the same
// bytes (proto.Equal compares Any values by their bytes, and the server versions
// resources by them).
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("xds: packing %T: %v", m, err))
	}
	return a
}

func routerFilter() *hcm.HttpFilter { return sharedRouterFilter }

var sharedRouterFilter = &hcm.HttpFilter{Name: routerFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})}}

func rdsConnectionManager(statPrefix, routeName string) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{
		StatPrefix: statPrefix,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource: adsConfigSource(), RouteConfigName: routeName,
		}},
		HttpFilters: []*hcm.HttpFilter{routerFilter()},
	}
}

// connectionManager packs an HTTP connection manager reading its routes over RDS; it
// depends on nothing but its names, so the packed form is reused across versions.
func (g *generator) connectionManager(statPrefix, routeName string) *anypb.Any {
	return g.memo.managers.get(statPrefix+"\x00"+routeName, nil, func() *anypb.Any {
		return mustAny(rdsConnectionManager(statPrefix, routeName))
	})
}

// proxylessClientListeners returns an API listener and a route configuration per
// HTTP service port, both named host:port: the name a gRPC client dialing
// xds:///host:port asks for.
func (g *generator) proxylessClientListeners() ([]*listener.Listener, []*route.RouteConfiguration) {
	var ls []*listener.Listener
	var rs []*route.RouteConfiguration
	for _, svc := range g.view.Services {
		for _, port := range svc.Ports {
			if !port.Protocol.IsHTTP() {
				continue
			}
			name := hostPort(svc.Hostname, port.Number)
			ls = append(ls, g.memo.listeners.get(name, nil, func() *listener.Listener {
				return &listener.Listener{
					Name:        name,
					ApiListener: &listener.ApiListener{ApiListener: g.connectionManager(name, name)},
				}
			}))
			rs = append(rs, g.serviceRouteConfig(name, []string{svc.Hostname, name}, g.routes(svc, port)))
		}
	}
	return ls, rs
}

// serverListenerPrefix starts the name of every proxyless server listener.
var serverListenerPrefix = strings.TrimSuffix(ServerListenerTemplate, "%s")

// IsServerListener reports whether a listener name is one a proxyless gRPC server
// asks for (see ProxylessServerListener).
func IsServerListener(name string) bool { return strings.HasPrefix(name, serverListenerPrefix) }

// sidecarOutbound returns an Envoy sidecar's outbound listeners and routes: the
// capture listener on 15001, and one listener per service port number (named
// 0.0.0.0_PORT, not bound: it receives connections handed over by the capture
// listener).
//
// On a port's listener, a service with addresses (VIPs) gets a filter chain matching
// them: an HTTP service's chain routes through a route configuration of its own,
// named HOST:PORT, so that a routing change resends that service's routes and not
// the whole port's; a TCP service's chain forwards to its cluster. HTTP services
// without an address share the default chain, routed by Host header through the
// route configuration named by the port, as in Istio, which also passes traffic for
// unknown hosts through.
func (g *generator) sidecarOutbound() ([]*listener.Listener, []*route.RouteConfiguration) {
	type portServices struct {
		http []*mesh.Service
		tcp  []*mesh.Service
	}
	byPort := map[uint32]*portServices{}
	var numbers []uint32
	for _, svc := range g.view.Services {
		for _, p := range svc.Ports {
			ps := byPort[p.Number]
			if ps == nil {
				ps = &portServices{}
				byPort[p.Number] = ps
				numbers = append(numbers, p.Number)
			}
			if p.Protocol.IsHTTP() {
				ps.http = append(ps.http, svc)
			} else {
				ps.tcp = append(ps.tcp, svc)
			}
		}
	}
	slices.Sort(numbers)
	ls := []*listener.Listener{virtualOutboundListener()}
	var rs []*route.RouteConfiguration
	for _, n := range numbers {
		ps := byPort[n]
		portName := strconv.FormatUint(uint64(n), 10)
		l := &listener.Listener{
			Name:             "0.0.0.0_" + portName,
			Address:          socketAddress("0.0.0.0", n),
			BindToPort:       wrapperspb.Bool(false),
			TrafficDirection: core.TrafficDirection_OUTBOUND,
		}
		// Envoy rejects a listener whose filter chains match the same addresses: the
		// first service (by host name) to claim an address keeps it.
		claimed := map[netip.Prefix]bool{}
		var byHost []*mesh.Service
		for _, svc := range ps.http {
			ranges := addressRanges(svc.Addresses, claimed)
			if len(ranges) == 0 {
				byHost = append(byHost, svc)
				continue
			}
			p, _ := svc.Port(n)
			name := hostPort(svc.Hostname, n)
			l.FilterChains = append(l.FilterChains, filterChain(name, ranges, hcmFilterName, g.connectionManager("outbound_"+name, name)))
			// The chain already chose the service: any Host header reaches it.
			rs = append(rs, g.serviceRouteConfig(name, []string{"*"}, g.routes(svc, p)))
		}
		for _, svc := range ps.tcp {
			if ranges := addressRanges(svc.Addresses, claimed); len(ranges) > 0 {
				l.FilterChains = append(l.FilterChains, tcpProxyChain(ClusterName(n, "", svc.Hostname), ranges))
			}
			// A TCP service without an address cannot share a port: it is left out.
		}
		if len(ps.http) > 0 {
			l.FilterChains = append(l.FilterChains, filterChain("http", nil, hcmFilterName, g.connectionManager("outbound_0.0.0.0_"+portName, portName)))
			rs = append(rs, g.sidecarRouteConfig(portName, n, byHost))
		}
		if len(l.FilterChains) > 0 {
			ls = append(ls, l)
		}
	}
	return ls, rs
}

// addressRanges turns service addresses into filter chain ranges,
// leaving out those already claimed on the listener and claiming the rest.
func addressRanges(addresses []netip.Prefix, claimed map[netip.Prefix]bool) []*core.CidrRange {
	var ranges []*core.CidrRange
	for _, pfx := range addresses {
		if claimed[pfx] {
			continue
		}
		claimed[pfx] = true
		ranges = append(ranges, &core.CidrRange{AddressPrefix: pfx.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pfx.Bits()))})
	}
	return ranges
}

// filterChain is a chain with one network filter, matching destination addresses in
// ranges (none: the listener's default chain).
func filterChain(name string, ranges []*core.CidrRange, filter string, config *anypb.Any) *listener.FilterChain {
	fc := &listener.FilterChain{
		Name:    name,
		Filters: []*listener.Filter{{Name: filter, ConfigType: &listener.Filter_TypedConfig{TypedConfig: config}}},
	}
	if len(ranges) > 0 {
		fc.FilterChainMatch = &listener.FilterChainMatch{PrefixRanges: ranges}
	}
	return fc
}

// tcpProxyChain forwards connections to addresses in ranges to a cluster.
func tcpProxyChain(cluster string, ranges []*core.CidrRange) *listener.FilterChain {
	return filterChain(cluster, ranges, tcpProxyFilterName, mustAny(&tcpproxy.TcpProxy{
		StatPrefix:       cluster,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
	}))
}

// serviceRouteConfig is the route configuration of one service port: one virtual
// host, named like the configuration, reached by domains.
func (g *generator) serviceRouteConfig(name string, domains []string, routes *routeSet) *route.RouteConfiguration {
	return g.memo.routeConfigs.get(name, []any{routes}, func() *route.RouteConfiguration {
		rc := &route.RouteConfiguration{
			Name:         name,
			VirtualHosts: []*route.VirtualHost{{Name: name, Domains: domains, Routes: routes.routes}},
		}
		if g.target.Kind != mesh.KindProxyless {
			rc.ValidateClusters = wrapperspb.Bool(false)
		}
		return rc
	})
}

// sidecarRouteConfig has a virtual host per service on the port, reachable by its
// full name and the short forms a Kubernetes client would use, plus a catch-all that
// passes unknown hosts through (Istio's ALLOW_ANY).
func (g *generator) sidecarRouteConfig(name string, port uint32, svcs []*mesh.Service) *route.RouteConfiguration {
	rc := &route.RouteConfiguration{Name: name, ValidateClusters: wrapperspb.Bool(false)}
	for _, svc := range svcs {
		p, _ := svc.Port(port)
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
			Name:    hostPort(svc.Hostname, port),
			Domains: g.domains(svc.Hostname, port),
			Routes:  g.routes(svc, p).routes,
		})
	}
	rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
		Name:    "allow_any",
		Domains: []string{"*"},
		Routes: []*route.Route{{
			Name:  "allow_any",
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_Cluster{Cluster: PassthroughClusterName},
			}},
		}},
	})
	return rc
}

// domains lists the names a host is reached by, each with and without the port.
// Kubernetes-style hosts also get their short forms; the bare name only within the
// proxy's own namespace, where it is unambiguous.
func (g *generator) domains(host string, port uint32) []string {
	names := []string{host}
	if base, ok := strings.CutSuffix(host, "."+mesh.DomainSuffix); ok {
		if name, ns, ok := strings.Cut(base, "."); ok && !strings.Contains(ns, ".") {
			names = append(names, base+".svc", base)
			if ns == g.view.Namespace {
				names = append(names, name)
			}
		}
	}
	out := make([]string, 0, 2*len(names))
	for _, n := range names {
		out = append(out, n, net.JoinHostPort(n, strconv.FormatUint(uint64(port), 10)))
	}
	return out
}

// virtualOutboundListener captures redirected outbound connections and hands each to
// the listener of its original destination port; unmatched traffic passes through.
func virtualOutboundListener() *listener.Listener {
	return &listener.Listener{
		Name:             VirtualOutboundListenerName,
		Address:          socketAddress("0.0.0.0", VirtualOutboundPort),
		UseOriginalDst:   wrapperspb.Bool(true),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		ListenerFilters: []*listener.ListenerFilter{{
			Name:       origDstFilterName,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdst.OriginalDst{})},
		}},
		FilterChains: []*listener.FilterChain{tcpProxyChain(PassthroughClusterName, nil)},
	}
}
