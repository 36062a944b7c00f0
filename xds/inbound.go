package xds

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/palisade-mesh/palisade/mesh"
)

// VirtualInboundListenerName is the sidecar's inbound capture listener, as in Istio.
const (
	VirtualInboundListenerName = "virtualInbound"
	VirtualInboundPort         = 15006
)

const tlsInspectorFilterName = "envoy.filters.listener.tls_inspector"

// Transport protocols as Envoy's TLS inspector reports them.
const (
	transportTLS       = "tls"
	transportRawBuffer = "raw_buffer"
)

var (
	origDstListenerFilter = &listener.ListenerFilter{
		Name:       origDstFilterName,
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdst.OriginalDst{})},
	}
	tlsInspectorListenerFilter = &listener.ListenerFilter{
		Name:       tlsInspectorFilterName,
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspector.TlsInspector{})},
	}
)

// sidecarInbound returns the listener that receives the connections redirected to
// the workload (15006, as in Istio): each is handed, by its original destination
// port and (thanks to the TLS inspector) whether it starts with a TLS handshake, to
// a filter chain that terminates mutual TLS or takes plaintext, as the workload's
// PeerAuthentication mode for that port allows, and forwards it to the application.
// A connection that matches no chain (plaintext in STRICT mode) is closed.
//
//   - STRICT: a chain for TLS only, terminating mutual TLS.
//   - PERMISSIVE: that chain and one for plaintext (raw_buffer). Unlike Istio, which
//     passes TLS connections that do not offer its ALPN through to the application,
//     every TLS connection is taken as mesh mTLS: proxyless gRPC clients offer only
//     "h2".
//   - DISABLE: one chain for any connection, passed through as it is.
//
// Port-level modes get chains matching their destination port, which Envoy prefers
// to the chains without one.
//
// Connections are passed through to the application as TCP (tcp_proxy), except for
// a workload that the policy engine guards (Target.ExtAuthz): each port it serves
// HTTP on gets chains of its own, with the port's mode and the same transport
// sockets, whose network filter is an HTTP connection manager sending every request
// through ext_authz first (inboundHTTPManager). Its other ports stay TCP.
func (g *generator) sidecarInbound() *listener.Listener {
	p, authz := g.target.Policies, g.target.ExtAuthz
	return g.memo.listeners.get(VirtualInboundListenerName, []any{p.Mesh, p.Namespace, p.Workload, authz}, func() *listener.Listener {
		mtls := p.Effective()
		chains := []*listener.FilterChain{{
			// A connection to the listener itself would loop.
			Name:             VirtualInboundListenerName + "-blackhole",
			FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(VirtualInboundPort)},
			Filters:          []*listener.Filter{tcpProxyFilter(BlackHoleClusterName)},
		}}
		httpPorts := authz.portList()
		ports := mtls.Ports()
		if len(httpPorts) > 0 {
			ports = slices.Compact(slices.Sorted(slices.Values(append(ports, httpPorts...))))
		}
		for _, port := range ports {
			if port == VirtualInboundPort {
				continue
			}
			filter := tcpProxyFilter(InboundPassthroughClusterName)
			if slices.Contains(httpPorts, port) {
				filter = g.inboundHTTPManager(port)
			}
			chains = append(chains, g.inboundChains(mtls.ModeFor(port), port, filter)...)
		}
		chains = append(chains, g.inboundChains(mtls.Mode, 0, tcpProxyFilter(InboundPassthroughClusterName))...)
		return &listener.Listener{
			Name:             VirtualInboundListenerName,
			Address:          socketAddress("0.0.0.0", VirtualInboundPort),
			UseOriginalDst:   wrapperspb.Bool(true),
			TrafficDirection: core.TrafficDirection_INBOUND,
			ListenerFilters:  []*listener.ListenerFilter{origDstListenerFilter, tlsInspectorListenerFilter},
			FilterChains:     chains,
		}
	})
}

// inboundChains are the chains of a mode, for connections to port (0: any port),
// with one network filter.
func (g *generator) inboundChains(mode mesh.MTLSMode, port uint32, filter *listener.Filter) []*listener.FilterChain {
	chain := func(kind, transport string) *listener.FilterChain {
		name := VirtualInboundListenerName + "-" + kind
		m := &listener.FilterChainMatch{TransportProtocol: transport}
		if port != 0 {
			name += "-" + strconv.FormatUint(uint64(port), 10)
			m.DestinationPort = wrapperspb.UInt32(port)
		}
		fc := &listener.FilterChain{Name: name, Filters: []*listener.Filter{filter}}
		if transport != "" || port != 0 {
			fc.FilterChainMatch = m
		}
		if kind == "mtls" {
			fc.TransportSocket = g.inboundTLS()
		}
		return fc
	}
	switch mode {
	case mesh.MTLSStrict:
		return []*listener.FilterChain{chain("mtls", transportTLS)}
	case mesh.MTLSDisable:
		return []*listener.FilterChain{chain("plaintext", "")}
	}
	return []*listener.FilterChain{chain("mtls", transportTLS), chain("plaintext", transportRawBuffer)}
}

func tcpProxyFilter(cluster string) *listener.Filter {
	return &listener.Filter{Name: tcpProxyFilterName, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxy.TcpProxy{
		StatPrefix:       cluster,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
	})}}
}

// ProxylessServerListener returns the listener a proxyless gRPC server of target t
// asks for by name (ServerListenerTemplate with its listening address, which must be
// IP:PORT).
//
// Its one filter chain requires mutual TLS when the workload's PeerAuthentication
// mode for PORT is STRICT, and takes plaintext otherwise: a gRPC server cannot tell
// TLS from plaintext on one port (it ignores filter chains matching on transport
// protocol), so PERMISSIVE means plaintext, as in Istio's gRPC generator. Likewise,
// a workload labelled security.istio.io/tlsMode=istio requires mutual TLS in
// PERMISSIVE mode, since clients with auto mTLS use it towards it.
//
// The policy engine does not guard proxyless servers: grpc-go has no ext_authz
// filter, so their listeners are the same whatever AuthorizationPolicies or
// RegoPolicies select them.
func ProxylessServerListener(t Target, o Options, name string) (*listener.Listener, error) {
	addr, ok := strings.CutPrefix(name, serverListenerPrefix)
	if !ok {
		return nil, fmt.Errorf("listener %q is not a gRPC server listener", name)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listener %q: listening address: %w", name, err)
	}
	g := &generator{target: t, opts: o, memo: noMemo()}
	mode := t.Policies.Effective().ModeFor(uint32(ap.Port()))
	if mode == mesh.MTLSPermissive && t.IstioTLSMode {
		mode = mesh.MTLSStrict
	}
	cm := &hcm.HttpConnectionManager{
		StatPrefix: "inbound_" + addr,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "inbound|" + addr,
			VirtualHosts: []*route.VirtualHost{{
				Name:    "inbound|" + addr,
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: []*hcm.HttpFilter{routerFilter()},
	}
	fc := filterChain("inbound|"+addr, nil, hcmFilterName, mustAny(cm))
	if mode == mesh.MTLSStrict {
		fc.Name += "|mtls"
		fc.TransportSocket = g.grpcServerTLS()
	}
	return &listener.Listener{
		Name:             name,
		Address:          socketAddress(ap.Addr().String(), uint32(ap.Port())),
		FilterChains:     []*listener.FilterChain{fc},
		TrafficDirection: core.TrafficDirection_INBOUND,
	}, nil
}
