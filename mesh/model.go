// Package mesh holds Palisade's model: an immutable snapshot of the services,
// endpoints, routing rules and security policies of the mesh, built from decoded
// config objects.
//
// A Snapshot is plain data. Once published nothing may modify it; a change produces a
// new Snapshot. Translators read a Snapshot (or the View of one proxy) and never write.
package mesh

import (
	"net/netip"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// Snapshot is one consistent version of the whole mesh.
type Snapshot struct {
	// Version increases with every published snapshot of one source.
	Version uint64
	// Services are sorted by Hostname, then Namespace.
	Services []*Service
	// VirtualServices and DestinationRules are sorted by namespace, then name: the
	// order in which Istio's "first one wins" rules are applied.
	VirtualServices  []*VirtualService
	DestinationRules []*DestinationRule
	// PeerAuthentications holds the PeerAuthentication policies, indexed for
	// resolution (see ForWorkload); nil means none.
	PeerAuthentications *PeerAuthentications
	// AuthorizationPolicies, RequestAuthentications and RegoPolicies are sorted by
	// namespace, then name. See NeedsExtAuthz for which workloads they concern.
	AuthorizationPolicies  []*AuthorizationPolicy
	RequestAuthentications []*RequestAuthentication
	RegoPolicies           []*RegoPolicy
	// Diagnostics lists every problem found while reading and linking the objects.
	Diagnostics []config.Diagnostic
}

// Protocol of a service port, upper case as Istio spells it.
type Protocol string

// IsHTTP reports whether traffic on the port is HTTP (including gRPC), so that routing
// rules apply to it.
func (p Protocol) IsHTTP() bool {
	switch p {
	case "HTTP", "HTTP2", "GRPC", "GRPC-WEB":
		return true
	}
	return false
}

// Port of a service.
type Port struct {
	Name       string
	Number     uint32
	Protocol   Protocol
	TargetPort uint32 // 0: same as Number unless the endpoint says otherwise
}

// Service is one host of a ServiceEntry.
type Service struct {
	Hostname   string     // fully qualified
	Namespace  string     // namespace of the ServiceEntry
	Source     config.Key // the ServiceEntry
	Location   config.Source
	Ports      []Port
	Addresses  []netip.Prefix // VIPs, from IPs or CIDRs
	Resolution networking.ServiceEntry_Resolution
	ExportTo   Visibility
	// MeshExternal is true for a ServiceEntry of location MESH_EXTERNAL (the
	// default): clients never use mutual TLS towards it unless a DestinationRule
	// says ISTIO_MUTUAL, as in Istio.
	MeshExternal bool
	// SubjectAltNames are the ServiceEntry's subjectAltNames: identities its
	// endpoints may present, besides those of their service accounts.
	SubjectAltNames []string
	// Endpoints are sorted by address; inline endpoints and selected WorkloadEntries.
	Endpoints []*Endpoint

	inputs serviceInputs // what it was built from, to reuse it when they are unchanged
}

// Port returns the service's port with the given number.
func (s *Service) Port(number uint32) (Port, bool) {
	for _, p := range s.Ports {
		if p.Number == number {
			return p, true
		}
	}
	return Port{}, false
}

// Endpoint is one workload instance behind a service.
type Endpoint struct {
	Address string
	// Ports maps service port names to the port the workload listens on; a port not
	// named here is reached on the service port's target port (or number).
	Ports          map[string]uint32
	Labels         map[string]string
	Locality       string // region/zone/subzone
	Weight         uint32 // 0 means 1
	ServiceAccount string
	Namespace      string
	Source         config.Key // WorkloadEntry, or the ServiceEntry for inline endpoints
}

// PortFor returns the port the endpoint serves a service port on.
func (e *Endpoint) PortFor(p Port) uint32 {
	if n, ok := e.Ports[p.Name]; ok && n != 0 {
		return n
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Number
}

// VirtualService is a VirtualService with its hosts resolved to fully qualified names.
type VirtualService struct {
	Key      config.Key
	Source   config.Source
	Hosts    []string // fully qualified, in spec order
	ExportTo Visibility
	// Spec is shared with the decoded object: read only. Destination hosts in it may
	// be short names; resolve them with ResolveHost(dest, Key.Namespace).
	Spec *networking.VirtualService
}

// DestinationRule is a DestinationRule with its host resolved.
type DestinationRule struct {
	Key      config.Key
	Source   config.Source
	Host     string
	ExportTo Visibility
	Spec     *networking.DestinationRule // read only
}

// Subset returns the named subset, or nil.
func (d *DestinationRule) Subset(name string) *networking.Subset {
	for _, s := range d.Spec.GetSubsets() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// Visibility says which namespaces may see an object (Istio's exportTo).
type Visibility struct {
	All        bool
	Namespaces []string // sorted; meaningful when All is false
}

// Public is the default visibility: every namespace.
var Public = Visibility{All: true}

// visibility resolves an exportTo list for an object in namespace ns.
func visibility(exportTo []string, ns string) Visibility {
	if len(exportTo) == 0 {
		return Public
	}
	var v Visibility
	for _, e := range exportTo {
		switch e {
		case "*":
			return Public
		case "~":
			return Visibility{}
		case ".":
			v.Namespaces = append(v.Namespaces, ns)
		default:
			v.Namespaces = append(v.Namespaces, e)
		}
	}
	slices.Sort(v.Namespaces)
	v.Namespaces = slices.Compact(v.Namespaces)
	return v
}

// VisibleTo reports whether a proxy in namespace ns may see the object.
func (v Visibility) VisibleTo(ns string) bool {
	if v.All {
		return true
	}
	_, found := slices.BinarySearch(v.Namespaces, ns)
	return found
}

// DomainSuffix is the cluster's DNS suffix used to qualify short host names.
const DomainSuffix = "svc.cluster.local"

// ResolveHost qualifies a host named in an object of namespace ns, as Istio does: a
// name without a dot is a Kubernetes service of that namespace.
func ResolveHost(host, ns string) string {
	if host == "" || host == "*" || strings.Contains(host, ".") {
		return host
	}
	return host + "." + ns + "." + DomainSuffix
}

// HostMatches reports whether the host pattern (possibly "*", "*.suffix") matches a
// concrete host name.
func HostMatches(pattern, host string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*."):
		return strings.HasSuffix(host, pattern[1:])
	}
	return pattern == host
}
