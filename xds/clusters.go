package xds

import (
	"net/netip"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/mesh"
)

// connectTimeout is Istio's default upstream connect timeout.
const connectTimeout = 10 * time.Second

var sharedConnectTimeout = durationpb.New(connectTimeout)

// adsConfigSource points EDS and RDS at the ADS stream the proxy already has.
//
// It and the other shared messages below are built once and referenced by many
// resources: generated resources are never modified, so sharing is safe and saves an
// allocation (or a marshalling, for Any values) per resource.
func adsConfigSource() *core.ConfigSource { return sharedADSConfigSource }

var sharedADSConfigSource = &core.ConfigSource{
	ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	ResourceApiVersion:    core.ApiVersion_V3,
}

// clusters returns the service port's default cluster and one per subset of its
// DestinationRule.
func (g *generator) clusters(svc *mesh.Service, port mesh.Port) []*cluster.Cluster {
	dr := g.view.DestinationRuleFor(svc)
	var base *networking.TrafficPolicy
	if dr != nil {
		base = dr.Spec.TrafficPolicy
	}
	c := g.cluster(ClusterName(port.Number, "", svc.Hostname), port, base)
	g.applyUpstreamTLS(c, svc, port, "", nil, clientTLS(dr, nil, port.Number))
	out := []*cluster.Cluster{c}
	if dr != nil {
		for _, ss := range dr.Spec.Subsets {
			policy := base
			if ss.TrafficPolicy != nil {
				policy = ss.TrafficPolicy // Istio: a subset's policy overrides the rule's
			}
			c := g.cluster(ClusterName(port.Number, ss.Name, svc.Hostname), port, policy)
			g.applyUpstreamTLS(c, svc, port, ss.Name, ss.Labels, clientTLS(dr, ss, port.Number))
			out = append(out, c)
		}
	}
	return out
}

func (g *generator) cluster(name string, port mesh.Port, policy *networking.TrafficPolicy) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource(), ServiceName: name},
		ConnectTimeout:       sharedConnectTimeout,
		LbPolicy:             g.lbPolicy(portPolicy(policy, port.Number).GetLoadBalancer()),
	}
	if g.target.Kind != mesh.KindProxyless && (port.Protocol == "GRPC" || port.Protocol == "HTTP2") {
		c.TypedExtensionProtocolOptions = http2ProtocolOptions()
	}
	return c
}

// http2ProtocolOptions makes Envoy speak HTTP/2 to a cluster's endpoints. Each
// cluster gets its own map (a map is the one shared thing a reader could mistake for
// its own); the packed options inside are shared.
func http2ProtocolOptions() map[string]*anypb.Any {
	return map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": sharedHTTP2Options}
}

var sharedHTTP2Options = mustAny(&httpopts.HttpProtocolOptions{
	UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
		ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
	}},
})

// portPolicy applies a port-level override of a traffic policy, as Istio does: the
// port's settings replace the policy's load balancer when they set one.
func portPolicy(p *networking.TrafficPolicy, port uint32) *networking.TrafficPolicy {
	for _, pl := range p.GetPortLevelSettings() {
		if pl.GetPort().GetNumber() == port && pl.LoadBalancer != nil {
			return &networking.TrafficPolicy{LoadBalancer: pl.LoadBalancer}
		}
	}
	return p
}

// lbPolicy maps Istio's simple load balancers. Istio's default is LEAST_REQUEST;
// proxyless gRPC clients default to ROUND_ROBIN, and RANDOM (which they lack) falls
// back to it too.
func (g *generator) lbPolicy(lb *networking.LoadBalancerSettings) cluster.Cluster_LbPolicy {
	switch lb.GetSimple() {
	case networking.LoadBalancerSettings_ROUND_ROBIN:
		return cluster.Cluster_ROUND_ROBIN
	//lint:ignore SA1019 deprecated, but Istio still accepts LEAST_CONN as LEAST_REQUEST
	case networking.LoadBalancerSettings_LEAST_REQUEST, networking.LoadBalancerSettings_LEAST_CONN:
		return cluster.Cluster_LEAST_REQUEST
	case networking.LoadBalancerSettings_RANDOM:
		if g.target.Kind != mesh.KindProxyless {
			return cluster.Cluster_RANDOM
		}
	}
	if g.target.Kind == mesh.KindProxyless {
		return cluster.Cluster_ROUND_ROBIN
	}
	return cluster.Cluster_LEAST_REQUEST
}

// endpoints returns the load assignments of the service port's clusters.
func (g *generator) endpoints(svc *mesh.Service, port mesh.Port) []*endpoint.ClusterLoadAssignment {
	dr := g.view.DestinationRuleFor(svc)
	auto := g.target.Kind != mesh.KindProxyless && g.upstreamMode(svc, clientTLS(dr, nil, port.Number)) == upstreamAuto
	out := []*endpoint.ClusterLoadAssignment{g.loadAssignment(ClusterName(port.Number, "", svc.Hostname), svc.Endpoints, port, nil, auto)}
	if dr != nil {
		for _, ss := range dr.Spec.Subsets {
			auto := g.target.Kind != mesh.KindProxyless && g.upstreamMode(svc, clientTLS(dr, ss, port.Number)) == upstreamAuto
			out = append(out, g.loadAssignment(ClusterName(port.Number, ss.Name, svc.Hostname), svc.Endpoints, port, ss.Labels, auto))
		}
	}
	return out
}

// clusterEndpoints returns the endpoints selected by subset labels that EDS can
// serve (those with an IP address).
func clusterEndpoints(eps []*mesh.Endpoint, subset map[string]string) []*mesh.Endpoint {
	var out []*mesh.Endpoint
	for _, ep := range eps {
		if !mesh.LabelsMatch(subset, ep.Labels) {
			continue
		}
		if _, err := netip.ParseAddr(ep.Address); err != nil {
			continue // host names need DNS resolution, not EDS (reported by the model)
		}
		out = append(out, ep)
	}
	return out
}

// loadAssignment groups the endpoints selected by subset labels by locality. Every
// locality gets a non-zero weight: gRPC clients silently drop zero-weight localities.
// In the assignment of an auto mTLS cluster (autoMTLS), an endpoint that takes
// mutual TLS carries the metadata that selects the cluster's mTLS transport socket.
func (g *generator) loadAssignment(name string, eps []*mesh.Endpoint, port mesh.Port, subset map[string]string, autoMTLS bool) *endpoint.ClusterLoadAssignment {
	byLocality := map[string]*endpoint.LocalityLbEndpoints{}
	for _, ep := range clusterEndpoints(eps, subset) {
		weight := max(ep.Weight, 1)
		le := byLocality[ep.Locality]
		if le == nil {
			le = &endpoint.LocalityLbEndpoints{Locality: locality(ep.Locality), LoadBalancingWeight: wrapperspb.UInt32(0)}
			byLocality[ep.Locality] = le
		}
		le.LoadBalancingWeight.Value += weight
		lb := &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: socketAddress(ep.Address, ep.PortFor(port)),
			}},
			LoadBalancingWeight: wrapperspb.UInt32(weight),
		}
		if autoMTLS && g.endpointUsesMTLS(ep, port) {
			lb.Metadata = istioTLSEndpointMD
		}
		le.LbEndpoints = append(le.LbEndpoints, lb)
	}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	for _, l := range mesh.SortedKeys(byLocality) {
		cla.Endpoints = append(cla.Endpoints, byLocality[l])
	}
	return cla
}

func locality(s string) *core.Locality {
	parts := strings.SplitN(s, "/", 3)
	l := &core.Locality{Region: parts[0]}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.SubZone = parts[2]
	}
	return l
}

func socketAddress(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       ip,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

// passthroughCluster forwards to the original destination (Istio's ALLOW_ANY mode).
func passthroughCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 PassthroughClusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
	}
}

// inboundPassthroughCluster forwards a sidecar's inbound connections to the
// application at their original destination, from 127.0.0.6 so that the traffic
// capture does not take them back to the sidecar (as in Istio).
func inboundPassthroughCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 InboundPassthroughClusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		UpstreamBindConfig: &core.BindConfig{SourceAddress: &core.SocketAddress{
			Address:       InboundPassthroughBindAddress,
			PortSpecifier: &core.SocketAddress_PortValue{PortValue: 0},
		}},
	}
}

// InboundPassthroughBindAddress is the source address of connections from a
// sidecar to its application.
const InboundPassthroughBindAddress = "127.0.0.6"

// blackHoleCluster has no endpoints: traffic routed to it fails.
func blackHoleCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 BlackHoleClusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
	}
}
