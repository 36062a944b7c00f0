// Package xds translates Palisade's model into Envoy xDS resources.
//
// Translation is a pure function of a namespace's mesh.View and the proxy's kind:
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

// Generate returns the configuration for a proxy of the given kind in view's
// namespace. Server-side listeners of proxyless gRPC servers are produced on request
// by ProxylessServerListener, since their names carry the listening address.
func Generate(view *mesh.View, kind mesh.ProxyKind) *Resources {
	g := &generator{view: view, kind: kind, memo: noMemo()}
	return g.generate()
}

// GenerateWith is Generate reusing the translations of the previous configuration
// version recorded in prev (nil for none) where their inputs are unchanged. It
// returns the Memo to pass to the next call for the same view.
func GenerateWith(view *mesh.View, kind mesh.ProxyKind, prev *Memo) (*Resources, *Memo) {
	g := generator{view: view, kind: kind, memo: prev.advance()}
	return g.generate(), g.memo
}

func (g *generator) generate() *Resources {
	view, kind := g.view, g.kind
	res := &Resources{}
	for _, svc := range view.Services {
		for _, port := range svc.Ports {
			k := servicePort{svc, port.Number}
			dr := []any{g.view.DestinationRuleFor(svc)}
			res.Clusters = append(res.Clusters, g.memo.clusters.get(k, dr, func() []*cluster.Cluster { return g.clusters(svc, port) })...)
			res.Endpoints = append(res.Endpoints, g.memo.endpoints.get(k, dr, func() []*endpoint.ClusterLoadAssignment { return g.endpoints(svc, port) })...)
		}
	}
	switch kind {
	case mesh.KindProxyless:
		res.Listeners, res.Routes = g.proxylessClientListeners()
	default:
		res.Listeners, res.Routes = g.sidecarOutbound()
		res.Clusters = append(res.Clusters, passthroughCluster(), blackHoleCluster())
	}
	sortByName(res.Listeners, (*listener.Listener).GetName)
	sortByName(res.Routes, (*route.RouteConfiguration).GetName)
	sortByName(res.Clusters, (*cluster.Cluster).GetName)
	sortByName(res.Endpoints, (*endpoint.ClusterLoadAssignment).GetClusterName)
	return res
}

type generator struct {
	view *mesh.View
	kind mesh.ProxyKind
	memo *Memo
}

func sortByName[T any](s []T, name func(T) string) {
	slices.SortFunc(s, func(a, b T) int { return cmp.Compare(name(a), name(b)) })
}

// Cluster names follow Istio: outbound|PORT|SUBSET|HOST.
const (
	PassthroughClusterName = "PassthroughCluster"
	BlackHoleClusterName   = "BlackHoleCluster"
)

// ClusterName returns Istio's name of an outbound cluster.
func ClusterName(port uint32, subset, host string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "|" + subset + "|" + host
}

// hostPort is the name of a proxyless listener and route for a service port.
func hostPort(host string, port uint32) string {
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}
