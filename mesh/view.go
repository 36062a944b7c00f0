package mesh

import (
	"slices"
	"strings"
)

// ProxyKind says which generator serves a proxy.
type ProxyKind string

const (
	// KindSidecar is an Envoy sidecar (the default).
	KindSidecar ProxyKind = "sidecar"
	// KindProxyless is a gRPC application reading xDS directly (Istio's GENERATOR=grpc).
	KindProxyless ProxyKind = "proxyless"
)

// Proxy describes an xDS client: who it is and where it runs.
type Proxy struct {
	ID             string
	Kind           ProxyKind
	Namespace      string
	ServiceAccount string
	Labels         map[string]string
	IPs            []string
}

// RootNamespace holds mesh-wide defaults (DestinationRules there apply to every
// namespace that has none of its own), as istio-system does in Istio.
const RootNamespace = "istio-system"

// View is what a proxy in one namespace can see: the services, routing rules and
// destination rules exported to that namespace. Views are computed per namespace and
// shared by every proxy there.
type View struct {
	Namespace string
	// Services visible to the namespace, sorted by hostname; where several namespaces
	// declare one host, the proxy's own namespace wins, then the first by name.
	Services []*Service
	// VirtualServices visible and bound to the mesh (sidecars and proxyless clients),
	// in precedence order.
	VirtualServices []*VirtualService
	// PeerAuthentications are the snapshot's (every namespace's: a destination's
	// policies decide how to connect to it).
	PeerAuthentications *PeerAuthentications

	// Indexes, so that a lookup does not scan every rule: exact hosts by name,
	// wildcard hosts in precedence order.
	vsByHost    map[string]*VirtualService
	vsWildcards []hostRule[*VirtualService]
	drByNsHost  map[nsHost]*DestinationRule
	drWildcards []hostRule[*DestinationRule]
}

type nsHost struct{ namespace, host string }

type hostRule[T any] struct {
	pattern string
	rule    T
}

// ViewFor computes the view of namespace ns.
func (s *Snapshot) ViewFor(ns string) *View {
	v := &View{Namespace: ns, PeerAuthentications: s.PeerAuthentications}
	for _, svc := range s.Services {
		if !svc.ExportTo.VisibleTo(ns) && svc.Namespace != ns {
			continue
		}
		if n := len(v.Services); n > 0 && v.Services[n-1].Hostname == svc.Hostname {
			if svc.Namespace == ns && v.Services[n-1].Namespace != ns {
				v.Services[n-1] = svc
			}
			continue
		}
		v.Services = append(v.Services, svc)
	}
	for _, vs := range s.VirtualServices {
		if (vs.ExportTo.VisibleTo(ns) || vs.Key.Namespace == ns) && appliesToMesh(vs) {
			v.VirtualServices = append(v.VirtualServices, vs)
		}
	}
	// The proxy's own namespace takes precedence, as in Istio.
	slices.SortStableFunc(v.VirtualServices, func(a, b *VirtualService) int {
		return boolRank(a.Key.Namespace == ns) - boolRank(b.Key.Namespace == ns)
	})
	v.vsByHost = map[string]*VirtualService{}
	for _, vs := range v.VirtualServices {
		for _, h := range vs.Hosts {
			if strings.Contains(h, "*") {
				v.vsWildcards = append(v.vsWildcards, hostRule[*VirtualService]{h, vs})
			} else if _, dup := v.vsByHost[h]; !dup {
				v.vsByHost[h] = vs
			}
		}
	}
	v.drByNsHost = map[nsHost]*DestinationRule{}
	for _, dr := range s.DestinationRules {
		if !dr.ExportTo.VisibleTo(ns) && dr.Key.Namespace != ns {
			continue
		}
		if strings.Contains(dr.Host, "*") {
			v.drWildcards = append(v.drWildcards, hostRule[*DestinationRule]{dr.Host, dr})
		} else if k := (nsHost{dr.Key.Namespace, dr.Host}); v.drByNsHost[k] == nil {
			v.drByNsHost[k] = dr
		}
	}
	return v
}

func boolRank(b bool) int {
	if b {
		return 0
	}
	return 1
}

// appliesToMesh reports whether a VirtualService binds to sidecars: it names no
// gateways, or names the reserved gateway "mesh".
func appliesToMesh(vs *VirtualService) bool {
	gws := vs.Spec.GetGateways()
	return len(gws) == 0 || slices.Contains(gws, "mesh")
}

// Service returns the visible service for a fully qualified host, or nil.
func (v *View) Service(host string) *Service {
	i, found := slices.BinarySearchFunc(v.Services, host, func(s *Service, h string) int {
		switch {
		case s.Hostname < h:
			return -1
		case s.Hostname > h:
			return 1
		}
		return 0
	})
	if !found {
		return nil
	}
	return v.Services[i]
}

// VirtualServiceFor returns the VirtualService that routes host, or nil. An exact
// host match wins over a wildcard; otherwise the first in precedence order wins.
func (v *View) VirtualServiceFor(host string) *VirtualService {
	if vs := v.vsByHost[host]; vs != nil {
		return vs
	}
	for _, w := range v.vsWildcards {
		if HostMatches(w.pattern, host) {
			return w.rule
		}
	}
	return nil
}

// DestinationRuleFor returns the DestinationRule for a service: the proxy's
// namespace first, then the service's namespace, then the root namespace — Istio's
// lookup order. An exact host wins over a wildcard within each namespace.
func (v *View) DestinationRuleFor(svc *Service) *DestinationRule {
	for _, ns := range []string{v.Namespace, svc.Namespace, RootNamespace} {
		if dr := v.drByNsHost[nsHost{ns, svc.Hostname}]; dr != nil {
			return dr
		}
		for _, w := range v.drWildcards {
			if w.rule.Key.Namespace == ns && HostMatches(w.pattern, svc.Hostname) {
				return w.rule
			}
		}
	}
	return nil
}
