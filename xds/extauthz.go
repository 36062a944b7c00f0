package xds

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/palisade-mesh/palisade/mesh"
)

// ExtAuthzClusterName is the static cluster through which sidecars reach the policy
// engine's ext_authz server (palisade-agent, on their host; Options.ExtAuthzAddress).
const ExtAuthzClusterName = "palisade-ext-authz"

// DefaultExtAuthzAddress is where palisade-agent serves ext_authz unless configured
// otherwise.
const DefaultExtAuthzAddress = "127.0.0.1:9191"

const extAuthzFilterName = "envoy.filters.http.ext_authz"

// The context extensions by which a sidecar tells the ext_authz server which
// workload is being called. They are authz.ExtensionWorkloadNamespace and
// authz.ExtensionWorkloadLabels, spelled out here because package authz links OPA's
// evaluator; TestExtAuthzNamesMatchAuthz checks that they agree.
const (
	extensionWorkloadNamespace = "palisade.workload.namespace"
	extensionWorkloadLabels    = "palisade.workload.labels"
)

// Settings of the ext_authz filter.
const (
	// extAuthzMaxRequestBytes of a request's body are sent with the check, so that
	// OPA-Envoy policies can read input.parsed_body.
	extAuthzMaxRequestBytes = 8192
	extAuthzConnectTimeout  = time.Second
)

// ExtAuthz says which of a sidecar's inbound requests the policy engine decides, and
// how the sidecar names its workload to it. The zero value: none. It is comparable,
// so that it can be part of a cache key (xds/server's view key).
type ExtAuthz struct {
	// Labels of the workload, as the context extension palisade.workload.labels
	// carries them: "k1=v1,k2=v2", sorted by key (authz.EncodeLabels).
	Labels string
	// Ports the workload serves HTTP on (the destination ports of connections to
	// it), ascending and comma-separated: "8080,9080". Empty means none, and then
	// the policy engine is not consulted.
	Ports string
}

// Enabled reports whether any inbound request goes through the policy engine.
func (a ExtAuthz) Enabled() bool { return a.Ports != "" }

// portList returns Ports as numbers.
func (a ExtAuthz) portList() []uint32 {
	if a.Ports == "" {
		return nil
	}
	fields := strings.Split(a.Ports, ",")
	out := make([]uint32, 0, len(fields))
	for _, f := range fields {
		if n, err := strconv.ParseUint(f, 10, 32); err == nil && n != 0 {
			out = append(out, uint32(n))
		}
	}
	return out
}

// extAuthzFor returns the ExtAuthz of a sidecar of namespace ns with the given labels
// and instance IPs (its INSTANCE_IPS): when a CUSTOM AuthorizationPolicy or a
// RegoPolicy selects the workload (mesh.Snapshot.NeedsExtAuthz), the requests to the
// ports it serves HTTP on.
//
// Those ports are found as Istio finds a sidecar's service instances: the services
// that have an endpoint of namespace ns at one of the proxy's IPs, and of them the
// HTTP ports (mesh.Protocol.IsHTTP), as the endpoint serves them (mesh.Endpoint.
// PortFor). A port that some service declares HTTP counts as HTTP. Every other
// inbound connection (TCP ports, ports no service declares, and all of them for a
// proxy without INSTANCE_IPS or that is no service's endpoint) stays passed through
// as TCP: it is not known to carry HTTP, and an HTTP connection manager would break
// a protocol that is not.
func extAuthzFor(snap *mesh.Snapshot, ns string, labels map[string]string, ips []string) ExtAuthz {
	if len(ips) == 0 || !snap.NeedsExtAuthz(ns, labels) {
		return ExtAuthz{}
	}
	ports := workloadHTTPPorts(snap, ns, ips)
	if len(ports) == 0 {
		return ExtAuthz{}
	}
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = strconv.FormatUint(uint64(p), 10)
	}
	return ExtAuthz{Labels: encodeLabels(labels), Ports: strings.Join(parts, ",")}
}

// workloadHTTPPorts returns, sorted, the ports on which the workload of namespace ns
// at the given addresses serves the HTTP ports of the services it is an endpoint of.
func workloadHTTPPorts(snap *mesh.Snapshot, ns string, ips []string) []uint32 {
	addrs := make(map[string]bool, len(ips))
	for _, ip := range ips {
		addrs[canonicalAddress(ip)] = true
	}
	var ports []uint32
	for _, svc := range snap.Services {
		for _, ep := range svc.Endpoints {
			if ep.Namespace != ns || !addrs[canonicalAddress(ep.Address)] {
				continue
			}
			for _, p := range svc.Ports {
				// The virtual inbound port's own chain keeps connections from looping.
				if n := ep.PortFor(p); p.Protocol.IsHTTP() && n != 0 && n != VirtualInboundPort {
					ports = append(ports, n)
				}
			}
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// canonicalAddress spells an IP address one way; other strings are left alone.
func canonicalAddress(s string) string {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}

// encodeLabels is authz.EncodeLabels of the labels, with their keys sorted.
func encodeLabels(labels map[string]string) string {
	var b strings.Builder
	for i, k := range mesh.SortedKeys(labels) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// extAuthzAddress returns the address of the ext_authz server: Options.ExtAuthzAddress,
// or DefaultExtAuthzAddress when it is empty or not an IP:PORT (see Options.Validate).
func (o Options) extAuthzAddress() netip.AddrPort {
	if ap, err := netip.ParseAddrPort(o.ExtAuthzAddress); err == nil && ap.Port() != 0 {
		return ap
	}
	return netip.MustParseAddrPort(DefaultExtAuthzAddress)
}

// Validate reports Options that translation cannot use as they are.
func (o Options) Validate() error {
	if o.ExtAuthzAddress == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(o.ExtAuthzAddress)
	if err != nil {
		return fmt.Errorf("ext_authz address %q: want IP:PORT: %w", o.ExtAuthzAddress, err)
	}
	if ap.Port() == 0 {
		return fmt.Errorf("ext_authz address %q: port 0", o.ExtAuthzAddress)
	}
	return nil
}

// extAuthzCluster is the static cluster of the ext_authz server, spoken to over
// gRPC (hence HTTP/2).
func (g *generator) extAuthzCluster() *cluster.Cluster {
	ap := g.opts.extAuthzAddress()
	return &cluster.Cluster{
		Name:                          ExtAuthzClusterName,
		ClusterDiscoveryType:          &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:                durationpb.New(extAuthzConnectTimeout),
		TypedExtensionProtocolOptions: http2ProtocolOptions(),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: ExtAuthzClusterName,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: socketAddress(ap.Addr().String(), uint32(ap.Port())),
				}},
			}}}},
		},
	}
}

// sharedExtAuthzFilter asks the ext_authz server about every request, with up to
// 8 KiB of its body, and denies it (403) when the server cannot be reached or fails:
// the policy engine fails closed.
var sharedExtAuthzFilter = &hcm.HttpFilter{Name: extAuthzFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&extauthz.ExtAuthz{
	Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{
		TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: ExtAuthzClusterName}},
	}},
	TransportApiVersion:    core.ApiVersion_V3,
	FailureModeAllow:       false,
	WithRequestBody:        &extauthz.BufferSettings{MaxRequestBytes: extAuthzMaxRequestBytes, AllowPartialMessage: true},
	IncludePeerCertificate: false,
	StatusOnError:          &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
})}}

// inboundPassthroughHTTPOptions make the inbound passthrough cluster speak to the
// application the HTTP version the client spoke (gRPC needs HTTP/2 end to end), for
// requests that an HTTP connection manager forwards; a TCP proxy ignores them.
var inboundPassthroughHTTPOptions = mustAny(&httpopts.HttpProtocolOptions{
	UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_UseDownstreamProtocolConfig{UseDownstreamProtocolConfig: &httpopts.HttpProtocolOptions_UseDownstreamHttpConfig{
		HttpProtocolOptions:  &core.Http1ProtocolOptions{},
		Http2ProtocolOptions: &core.Http2ProtocolOptions{},
	}},
})

// inboundHTTPManager is the network filter of the inbound chains of an HTTP port of
// a workload that the policy engine guards: every request is checked by ext_authz,
// told the workload's namespace and labels, then forwarded as it came to the
// application through the inbound passthrough cluster, the TCP proxy's cluster.
//
// As in Istio's inbound HTTP chains: the codec follows the client (ALPN, or the
// HTTP/2 preface), WebSocket upgrades pass, the route has no timeout (the TCP proxy
// had none), and paths are normalized before the policy sees them.
func (g *generator) inboundHTTPManager(port uint32) *listener.Filter {
	name := strconv.FormatUint(uint64(port), 10)
	perRoute := mustAny(&extauthz.ExtAuthzPerRoute{Override: &extauthz.ExtAuthzPerRoute_CheckSettings{CheckSettings: &extauthz.CheckSettings{
		ContextExtensions: map[string]string{
			extensionWorkloadNamespace: g.view.Namespace,
			extensionWorkloadLabels:    g.target.ExtAuthz.Labels,
		},
	}}})
	cm := &hcm.HttpConnectionManager{
		CodecType:  hcm.HttpConnectionManager_AUTO,
		StatPrefix: "inbound_0.0.0.0_" + name,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "inbound|" + name,
			VirtualHosts: []*route.VirtualHost{{
				Name:    "inbound|http|" + name,
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Name:  "default",
					Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: &route.RouteAction{
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: InboundPassthroughClusterName},
						Timeout:          durationpb.New(0),
					}},
				}},
				TypedPerFilterConfig: map[string]*anypb.Any{extAuthzFilterName: perRoute},
			}},
		}},
		HttpFilters:    []*hcm.HttpFilter{sharedExtAuthzFilter, routerFilter()},
		UpgradeConfigs: []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		NormalizePath:  wrapperspb.Bool(true),
	}
	return &listener.Filter{Name: hcmFilterName, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(cm)}}
}
