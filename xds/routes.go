package xds

import (
	"slices"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/mesh"
)

// defaultRetryOn is Istio's retry_on when a VirtualService sets attempts without it.
const defaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

// routes returns the routes of a service port, from the memo when nothing they are
// made of changed: the VirtualService, and the services and DestinationRules its
// destinations resolve to.
func (g *generator) routes(svc *mesh.Service, port mesh.Port) *routeSet {
	vs := g.view.VirtualServiceFor(svc.Hostname)
	fingerprint := []any{vs}
	if vs != nil {
		for _, hr := range vs.Spec.Http {
			for _, d := range hr.Route {
				dest := g.destinationService(vs, d.GetDestination())
				fingerprint = append(fingerprint, dest)
				if dest != nil {
					fingerprint = append(fingerprint, g.view.DestinationRuleFor(dest))
				}
			}
		}
	}
	return g.memo.routes.get(servicePort{svc, port.Number}, fingerprint, func() *routeSet {
		return &routeSet{g.translateRoutes(svc, port, vs)}
	})
}

// translateRoutes makes the routes of a service port: the VirtualService's HTTP
// routes that apply to the port, in order, or a single default route to the service.
func (g *generator) translateRoutes(svc *mesh.Service, port mesh.Port, vs *mesh.VirtualService) []*route.Route {
	if vs == nil {
		return []*route.Route{defaultRoute(ClusterName(port.Number, "", svc.Hostname))}
	}
	var out []*route.Route
	for _, hr := range vs.Spec.Http {
		action := g.routeAction(vs, hr, port)
		if action == nil {
			continue // no usable destination: reported by mesh.Build
		}
		matches := g.routeMatches(hr, port)
		for _, m := range matches {
			out = append(out, &route.Route{
				Name:   hr.Name,
				Match:  m,
				Action: &route.Route_Route{Route: action},
			})
		}
	}
	return out
}

func defaultRoute(cluster string) *route.Route {
	return &route.Route{
		Name:  "default",
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster},
			// Istio disables Envoy's 15 s default; a VirtualService timeout sets one.
			Timeout: durationpb.New(0),
		}},
	}
}

// routeMatches turns an HTTP route's match conditions (ORed) into Envoy matches,
// leaving out conditions bound to another port. A route without conditions matches
// everything; one whose every condition names another port matches nothing here.
func (g *generator) routeMatches(hr *networking.HTTPRoute, port mesh.Port) []*route.RouteMatch {
	if len(hr.Match) == 0 {
		return []*route.RouteMatch{{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}}
	}
	var out []*route.RouteMatch
	for _, m := range hr.Match {
		if m.Port != 0 && m.Port != port.Number {
			continue
		}
		if m.SourceNamespace != "" && m.SourceNamespace != g.view.Namespace {
			continue
		}
		if len(m.Gateways) > 0 && !slices.Contains(m.Gateways, "mesh") {
			continue
		}
		// Translations are shared per namespace and do not know a proxy's labels; a
		// condition on them is never met rather than met by everyone.
		if len(m.SourceLabels) > 0 {
			continue
		}
		out = append(out, routeMatch(m))
	}
	return out
}

func routeMatch(m *networking.HTTPMatchRequest) *route.RouteMatch {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	switch u := m.Uri.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		rm.PathSpecifier = &route.RouteMatch_Path{Path: u.Exact}
	case *networking.StringMatch_Prefix:
		rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: u.Prefix}
	case *networking.StringMatch_Regex:
		rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: u.Regex}}
	}
	if m.IgnoreUriCase {
		rm.CaseSensitive = wrapperspb.Bool(false)
	}
	pseudo := []struct {
		name string
		sm   *networking.StringMatch
	}{{":method", m.Method}, {":authority", m.Authority}, {":scheme", m.Scheme}}
	for _, p := range pseudo {
		if p.sm != nil {
			rm.Headers = append(rm.Headers, headerMatcher(p.name, p.sm, false))
		}
	}
	for _, name := range mesh.SortedKeys(m.Headers) {
		rm.Headers = append(rm.Headers, headerMatcher(name, m.Headers[name], false))
	}
	for _, name := range mesh.SortedKeys(m.WithoutHeaders) {
		rm.Headers = append(rm.Headers, headerMatcher(name, m.WithoutHeaders[name], true))
	}
	for _, name := range mesh.SortedKeys(m.QueryParams) {
		rm.QueryParameters = append(rm.QueryParameters, &route.QueryParameterMatcher{
			Name:                         name,
			QueryParameterMatchSpecifier: &route.QueryParameterMatcher_StringMatch{StringMatch: stringMatcher(m.QueryParams[name])},
		})
	}
	return rm
}

func headerMatcher(name string, sm *networking.StringMatch, invert bool) *route.HeaderMatcher {
	hm := &route.HeaderMatcher{Name: name, InvertMatch: invert}
	if s := stringMatcher(sm); s != nil {
		hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: s}
	} else {
		// An empty match ({}) means "header present", as in Istio.
		hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return hm
}

func stringMatcher(sm *networking.StringMatch) *matcher.StringMatcher {
	switch t := sm.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: t.Exact}}
	case *networking.StringMatch_Prefix:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: t.Prefix}}
	case *networking.StringMatch_Regex:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: t.Regex}}}
	}
	return nil
}

// routeAction builds the action of an HTTP route for traffic arriving on port, or nil
// when none of its destinations is usable from this view.
func (g *generator) routeAction(vs *mesh.VirtualService, hr *networking.HTTPRoute, port mesh.Port) *route.RouteAction {
	type weighted struct {
		cluster string
		weight  uint32
	}
	var dests []weighted
	var total uint32
	for _, d := range hr.Route {
		name, ok := g.destinationCluster(vs, d.Destination, port)
		if !ok {
			continue
		}
		w := uint32(max(d.Weight, 0))
		if len(hr.Route) == 1 {
			w = 100 // a single destination takes everything, whatever its weight says
		}
		dests = append(dests, weighted{name, w})
		total += w
	}
	if len(dests) == 0 || total == 0 {
		return nil
	}
	a := &route.RouteAction{Timeout: durationpb.New(0)}
	if len(dests) == 1 {
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: dests[0].cluster}
	} else {
		wc := &route.WeightedCluster{}
		for _, d := range dests {
			if d.weight == 0 {
				continue // Envoy and gRPC both accept it, but it only adds noise
			}
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: d.cluster, Weight: wrapperspb.UInt32(d.weight)})
		}
		if len(wc.Clusters) == 1 {
			a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: wc.Clusters[0].Name}
		} else {
			a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
		}
	}
	if t := hr.Timeout; t != nil {
		a.Timeout = t
		// gRPC clients ignore RouteAction.timeout and read max_stream_duration (A28).
		a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: t, GrpcTimeoutHeaderMax: t}
	}
	if rp := retryPolicy(hr.Retries); rp != nil {
		a.RetryPolicy = rp
	}
	return a
}

// destinationService is the service a VirtualService's destination names, or nil;
// short host names are relative to the VirtualService's namespace.
func (g *generator) destinationService(vs *mesh.VirtualService, d *networking.Destination) *mesh.Service {
	return g.view.Service(mesh.ResolveHost(d.GetHost(), vs.Key.Namespace))
}

// destinationCluster resolves a destination to a cluster name, or reports false when
// its host, port or subset is unknown or invisible to this view.
func (g *generator) destinationCluster(vs *mesh.VirtualService, d *networking.Destination, port mesh.Port) (string, bool) {
	svc := g.destinationService(vs, d)
	if svc == nil {
		return "", false
	}
	var number uint32
	switch {
	case d.GetPort().GetNumber() != 0:
		number = d.GetPort().GetNumber()
	case len(svc.Ports) == 1:
		number = svc.Ports[0].Number
	default:
		number = port.Number // same port as the traffic, as Istio does
	}
	if _, ok := svc.Port(number); !ok {
		return "", false
	}
	if d.Subset != "" {
		dr := g.view.DestinationRuleFor(svc)
		if dr == nil || dr.Subset(d.Subset) == nil {
			return "", false
		}
	}
	return ClusterName(number, d.Subset, svc.Hostname), true
}

func retryPolicy(r *networking.HTTPRetry) *route.RetryPolicy {
	if r == nil || r.Attempts == 0 {
		return nil
	}
	rp := &route.RetryPolicy{
		RetryOn:    r.RetryOn,
		NumRetries: wrapperspb.UInt32(uint32(r.Attempts)),
	}
	if rp.RetryOn == "" {
		rp.RetryOn = defaultRetryOn
	}
	if r.PerTryTimeout != nil {
		rp.PerTryTimeout = r.PerTryTimeout
	}
	if r.Backoff != nil {
		rp.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: r.Backoff}
	}
	return rp
}
