// Package xds translates Palisade's model into Envoy xDS resources.
//
// Translation is a pure function of a namespace's mesh.View and the proxy's Target
// (its kind, the PeerAuthentication selecting its workload and whether the policy
// engine guards it):
// Generate never mutates its inputs and returns the same resources for the same
// inputs, which is what makes golden tests and translation sharing possible. Two
// generators share the route, cluster and endpoint builders: one for proxyless gRPC
// clients and servers (API listeners named host:port, Istio's grpc generator
// conventions) and one for Envoy sidecars (per-port outbound listeners, Istio's
// cluster naming outbound|PORT|SUBSET|HOST).
package xds

import (
	"cmp"
	"slices"
	"strconv"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/palisade-mesh/palisade/mesh"
)

// Resources is the generated configuration of one proxy, each list sorted by name.
type Resources struct {
	Listeners []*listener.Listener
	Routes    []*route.RouteConfiguration
	Clusters  []*cluster.Cluster
	Endpoints []*endpoint.ClusterLoadAssignment
}

// TypeURLs lists the resource types Palisade serves, in the order Envoy applies them.
var TypeURLs = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// ByType returns the resources of one type URL as named messages.
func (r *Resources) ByType(typeURL string) []types.Resource {
	switch typeURL {
	case resource.ListenerType:
		return asResources(r.Listeners)
	case resource.RouteType:
		return asResources(r.Routes)
	case resource.ClusterType:
		return asResources(r.Clusters)
	case resource.EndpointType:
		return asResources(r.Endpoints)
	}
	return nil
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// DefaultTrustDomain is the trust domain of workload identities when none is
// configured, as in Istio.
const DefaultTrustDomain = "cluster.local"

// Options are the control plane's settings that translation depends on; they are
// not part of the mesh configuration. The zero value is usable.
type Options struct {
	// TrustDomain of the mesh's SPIFFE identities (spiffe://TRUST_DOMAIN/ns/NS/sa/SA),
	// used to check the certificates of peers; "" means DefaultTrustDomain.
	TrustDomain string
	// ExtAuthzAddress is where sidecars reach the policy engine's ext_authz server
	// (palisade-agent, on their own host), as IP:PORT; "" means
	// DefaultExtAuthzAddress (127.0.0.1:9191). See Validate.
	ExtAuthzAddress string
}

func (o Options) trustDomain() string {
	if o.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return o.TrustDomain
}

// Target is what a translation reads about the proxies it is made for, besides
// their namespace's view: proxies of one namespace that agree on it share one
// translation. Make it with TargetFor.
type Target struct {
	Kind mesh.ProxyKind
	// Policies are the PeerAuthentications that apply to the proxies' workload
	// (mesh.PeerAuthentications.ForWorkload). Inbound configuration (a sidecar's
	// virtualInbound listener, a proxyless server's listeners) depends on them and on
	// ExtAuthz, and on nothing else of the mesh: the mesh- and namespace-wide
	// policies are the same for every proxy of the namespace, the workload-level one
	// tells them apart.
	Policies mesh.PeerAuthenticationPolicies
	// IstioTLSMode is set for a proxyless workload labelled
	// security.istio.io/tlsMode=istio: its servers then require mutual TLS where the
	// mode is PERMISSIVE, since clients with auto mTLS will use it (as Istio's gRPC
	// generator does). Always false for sidecars, which do not read it.
	IstioTLSMode bool
	// ExtAuthz is set for a sidecar whose workload a CUSTOM AuthorizationPolicy or a
	// RegoPolicy selects: the requests to its HTTP ports are decided by the policy
	// engine, through Envoy's ext_authz filter (see sidecarInbound). Always the zero
	// value for proxyless gRPC: grpc-go has no ext_authz filter, so the policy
	// engine cannot guard a proxyless server.
	ExtAuthz ExtAuthz
}

// TargetFor returns the target of a proxy in a snapshot: the PeerAuthentications
// selecting its workload and, for a sidecar, whether and on which ports the policy
// engine guards it (extAuthzFor, which reads the proxy's instance IPs).
func TargetFor(snap *mesh.Snapshot, p *mesh.Proxy) Target {
	var pas *mesh.PeerAuthentications
	if snap != nil {
		pas = snap.PeerAuthentications
	}
	t := Target{Kind: p.Kind, Policies: pas.ForWorkload(p.Namespace, p.Labels)}
	if t.Kind == "" {
		t.Kind = mesh.KindSidecar
	}
	switch t.Kind {
	case mesh.KindProxyless:
		t.IstioTLSMode = p.Labels[mesh.TLSModeLabel] == mesh.TLSModeIstio
	case mesh.KindSidecar:
		if snap != nil {
			t.ExtAuthz = extAuthzFor(snap, p.Namespace, p.Labels, p.IPs)
		}
	}
	return t
}

// Generate returns the configuration for proxies of target t in view's namespace.
// Server-side listeners of proxyless gRPC servers are produced on request by
// ProxylessServerListener, since their names carry the listening address.
func Generate(view *mesh.View, t Target, o Options) *Resources {
	g := &generator{view: view, target: t, opts: o, memo: noMemo()}
	return g.generate()
}

// GenerateWith is Generate reusing the translations of the previous configuration
// version recorded in prev (nil for none) where their inputs are unchanged. It
// returns the Memo to pass to the next call for the same namespace and kind. A memo
// may also start the translation of another target of the same namespace and kind
// (every entry is checked against what it was made from), but not of other Options.
func GenerateWith(view *mesh.View, t Target, o Options, prev *Memo) (*Resources, *Memo) {
	g := generator{view: view, target: t, opts: o, memo: prev.advance()}
	return g.generate(), g.memo
}

func (g *generator) generate() *Resources {
	view, kind := g.view, g.target.Kind
	res := &Resources{}
	for _, svc := range view.Services {
		dr := g.view.DestinationRuleFor(svc)
		fingerprint := g.destinationPolicies(svc, dr)
		for _, port := range svc.Ports {
			k := servicePort{svc, port.Number}
			res.Clusters = append(res.Clusters, g.memo.clusters.get(k, fingerprint, func() []*cluster.Cluster { return g.clusters(svc, port) })...)
			res.Endpoints = append(res.Endpoints, g.memo.endpoints.get(k, fingerprint, func() []*endpoint.ClusterLoadAssignment { return g.endpoints(svc, port) })...)
		}
	}
	switch kind {
	case mesh.KindProxyless:
		res.Listeners, res.Routes = g.proxylessClientListeners()
	default:
		res.Listeners, res.Routes = g.sidecarOutbound()
		res.Listeners = append(res.Listeners, g.sidecarInbound())
		inbound := inboundPassthroughCluster()
		if g.target.ExtAuthz.Enabled() {
			inbound.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": inboundPassthroughHTTPOptions}
			res.Clusters = append(res.Clusters, g.extAuthzCluster())
		}
		res.Clusters = append(res.Clusters, passthroughCluster(), blackHoleCluster(), inbound)
	}
	sortByName(res.Listeners, (*listener.Listener).GetName)
	sortByName(res.Routes, (*route.RouteConfiguration).GetName)
	sortByName(res.Clusters, (*cluster.Cluster).GetName)
	sortByName(res.Endpoints, (*endpoint.ClusterLoadAssignment).GetClusterName)
	return res
}

type generator struct {
	view   *mesh.View
	target Target
	opts   Options
	memo   *Memo
}

func sortByName[T any](s []T, name func(T) string) {
	slices.SortFunc(s, func(a, b T) int { return cmp.Compare(name(a), name(b)) })
}

// Cluster names follow Istio: outbound|PORT|SUBSET|HOST.
const (
	PassthroughClusterName        = "PassthroughCluster"
	BlackHoleClusterName          = "BlackHoleCluster"
	InboundPassthroughClusterName = "InboundPassthroughCluster"
)

// ClusterName returns Istio's name of an outbound cluster.
func ClusterName(port uint32, subset, host string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "|" + subset + "|" + host
}

// hostPort is the name of a proxyless listener and route for a service port.
func hostPort(host string, port uint32) string {
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}
