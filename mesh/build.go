package mesh

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/config/policypb"
)

// Build links decoded objects into a Snapshot: ServiceEntries become services, their
// endpoints are gathered from inline entries and selected WorkloadEntries, the hosts
// and subsets routing rules refer to are resolved, and policies are gathered (CUSTOM
// AuthorizationPolicies and RegoPolicy providers that do not meet are reported).
// Problems are reported in Snapshot.Diagnostics; they never stop the rest of the mesh
// from being built.
func Build(version uint64, objs []config.Object) *Snapshot {
	return BuildFrom(nil, version, objs)
}

// BuildFrom is Build reusing the model objects of prev (may be nil) whose inputs are
// the very same decoded objects: unchanged parts of the mesh keep their identity from
// one snapshot to the next, which lets translators reuse their work.
func BuildFrom(prev *Snapshot, version uint64, objs []config.Object) *Snapshot {
	objs = slices.Clone(objs)
	slices.SortFunc(objs, func(a, b config.Object) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	b := builder{snap: &Snapshot{Version: version}, workloads: map[string][]config.Object{}, prev: indexPrevious(prev)}
	for _, o := range objs {
		if o.Kind == config.KindWorkloadEntry {
			b.workloads[o.Namespace] = append(b.workloads[o.Namespace], o)
		}
	}
	var peerAuthentications []*PeerAuthentication
	for _, o := range objs {
		switch spec := o.Spec.(type) {
		case *networking.ServiceEntry:
			b.serviceEntry(o, spec)
		case *networking.VirtualService:
			b.snap.VirtualServices = append(b.snap.VirtualServices, reuse(b.prev.virtualServices, o, func() *VirtualService {
				return &VirtualService{
					Key: o.Key, Source: o.Source, Spec: spec,
					Hosts:    resolveHosts(spec.Hosts, o.Namespace),
					ExportTo: visibility(spec.ExportTo, o.Namespace),
				}
			}))
		case *security.PeerAuthentication:
			peerAuthentications = append(peerAuthentications, reuse(b.prev.peerAuthentications, o, func() *PeerAuthentication {
				return newPeerAuthentication(o, spec)
			}))
		case *security.AuthorizationPolicy:
			b.snap.AuthorizationPolicies = append(b.snap.AuthorizationPolicies, reuse(b.prev.authorizationPolicies, o, func() *AuthorizationPolicy {
				return &AuthorizationPolicy{Key: o.Key, Source: o.Source, Spec: spec}
			}))
		case *security.RequestAuthentication:
			b.snap.RequestAuthentications = append(b.snap.RequestAuthentications, reuse(b.prev.requestAuthentications, o, func() *RequestAuthentication {
				return &RequestAuthentication{Key: o.Key, Source: o.Source, Spec: spec}
			}))
		case *policypb.RegoPolicy:
			b.snap.RegoPolicies = append(b.snap.RegoPolicies, reuse(b.prev.regoPolicies, o, func() *RegoPolicy {
				return &RegoPolicy{Key: o.Key, Source: o.Source, Spec: spec}
			}))
		case *networking.DestinationRule:
			b.snap.DestinationRules = append(b.snap.DestinationRules, reuse(b.prev.destinationRules, o, func() *DestinationRule {
				return &DestinationRule{
					Key: o.Key, Source: o.Source, Spec: spec,
					Host:     ResolveHost(spec.Host, o.Namespace),
					ExportTo: visibility(spec.ExportTo, o.Namespace),
				}
			}))
		}
	}
	slices.SortFunc(b.snap.Services, func(a, c *Service) int {
		return cmp.Or(cmp.Compare(a.Hostname, c.Hostname), cmp.Compare(a.Namespace, c.Namespace))
	})
	b.snap.PeerAuthentications = b.indexPeerAuthentications(peerAuthentications)
	b.checkServices()
	b.checkDestinationRules()
	b.checkVirtualServices()
	b.checkPolicies()
	return b.snap
}

type builder struct {
	snap      *Snapshot
	workloads map[string][]config.Object // WorkloadEntries by namespace, sorted by name
	prev      previous
}

// previous indexes the objects of the snapshot before, for reuse.
// built is a model object made from one decoded object: reuse can tell whether
// a new decoding is the same input.
type built interface {
	input() (proto.Message, config.Source)
}

func (vs *VirtualService) input() (proto.Message, config.Source)     { return vs.Spec, vs.Source }
func (dr *DestinationRule) input() (proto.Message, config.Source)    { return dr.Spec, dr.Source }
func (pa *PeerAuthentication) input() (proto.Message, config.Source) { return pa.Spec, pa.Source }

// reuse returns the previous snapshot's object for o when it was built from the
// same decoded spec (the decode cache keeps unchanged files' specs) and source,
// so that translations keyed by it are reused too; otherwise it builds a new one.
func reuse[T built](prev map[config.Key]T, o config.Object, build func() T) T {
	if p, ok := prev[o.Key]; ok {
		if spec, src := p.input(); spec == o.Spec && src == o.Source {
			return p
		}
	}
	return build()
}

type previous struct {
	services               map[serviceKey]*Service
	virtualServices        map[config.Key]*VirtualService
	destinationRules       map[config.Key]*DestinationRule
	peerAuthentications    map[config.Key]*PeerAuthentication
	authorizationPolicies  map[config.Key]*AuthorizationPolicy
	requestAuthentications map[config.Key]*RequestAuthentication
	regoPolicies           map[config.Key]*RegoPolicy
}

type serviceKey struct {
	entry config.Key
	host  string
}

func indexPrevious(s *Snapshot) previous {
	p := previous{
		services: map[serviceKey]*Service{}, virtualServices: map[config.Key]*VirtualService{},
		destinationRules: map[config.Key]*DestinationRule{}, peerAuthentications: map[config.Key]*PeerAuthentication{},
		authorizationPolicies: map[config.Key]*AuthorizationPolicy{}, requestAuthentications: map[config.Key]*RequestAuthentication{},
		regoPolicies: map[config.Key]*RegoPolicy{},
	}
	if s == nil {
		return p
	}
	for _, ap := range s.AuthorizationPolicies {
		p.authorizationPolicies[ap.Key] = ap
	}
	for _, ra := range s.RequestAuthentications {
		p.requestAuthentications[ra.Key] = ra
	}
	for _, rp := range s.RegoPolicies {
		p.regoPolicies[rp.Key] = rp
	}
	for _, pa := range s.PeerAuthentications.All() {
		p.peerAuthentications[pa.Key] = pa
	}
	for _, svc := range s.Services {
		p.services[serviceKey{svc.Source, svc.Hostname}] = svc
	}
	for _, vs := range s.VirtualServices {
		p.virtualServices[vs.Key] = vs
	}
	for _, dr := range s.DestinationRules {
		p.destinationRules[dr.Key] = dr
	}
	return p
}

func (b *builder) report(sev config.Severity, key config.Key, src config.Source, format string, args ...any) {
	b.snap.Diagnostics = append(b.snap.Diagnostics, config.Diagnostic{
		Severity: sev, Source: src, Object: key, Message: fmt.Sprintf(format, args...),
	})
}

func resolveHosts(hosts []string, ns string) []string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = ResolveHost(h, ns)
	}
	return out
}

func (b *builder) serviceEntry(o config.Object, se *networking.ServiceEntry) {
	ports := make([]Port, 0, len(se.Ports))
	for _, p := range se.Ports {
		proto := Protocol(strings.ToUpper(p.Protocol))
		if proto == "" {
			proto = "TCP" // Istio's default for an unnamed protocol
		}
		ports = append(ports, Port{Name: p.Name, Number: p.Number, Protocol: proto, TargetPort: p.TargetPort})
	}
	slices.SortFunc(ports, func(a, c Port) int { return cmp.Compare(a.Number, c.Number) })

	var eps []*Endpoint
	for _, we := range se.Endpoints {
		eps = append(eps, endpoint(we, o.Namespace, o.Key))
	}
	var workloads []*networking.WorkloadEntry
	if sel := se.WorkloadSelector.GetLabels(); len(sel) > 0 {
		for _, w := range b.workloads[o.Namespace] {
			we := w.Spec.(*networking.WorkloadEntry)
			if LabelsMatch(sel, we.Labels) {
				eps = append(eps, endpoint(we, w.Namespace, w.Key))
				workloads = append(workloads, we)
			}
		}
		if len(eps) == 0 {
			b.report(config.SeverityWarning, o.Key, o.Source, "spec.workloadSelector selects no WorkloadEntry in namespace %s", o.Namespace)
		}
	}
	slices.SortStableFunc(eps, func(a, c *Endpoint) int { return cmp.Compare(a.Address, c.Address) })
	if se.Resolution != networking.ServiceEntry_STATIC && se.Resolution != networking.ServiceEntry_NONE {
		b.report(config.SeverityWarning, o.Key, o.Source, "spec.resolution %s is not supported yet: only endpoints with IP addresses are served", se.Resolution)
	}

	var addresses []netip.Prefix
	for _, a := range se.Addresses {
		if p, err := config.ParseAddress(a); err == nil { // validated when decoded
			addresses = append(addresses, p)
		}
	}
	inputs := serviceInputs{entry: se, workloads: workloads}
	for _, h := range se.Hosts {
		host := ResolveHost(h, o.Namespace)
		if svc := b.prev.services[serviceKey{o.Key, host}]; svc != nil && svc.Location == o.Source && svc.inputs.same(inputs) {
			b.snap.Services = append(b.snap.Services, svc)
			continue
		}
		b.snap.Services = append(b.snap.Services, &Service{
			Hostname:        host,
			Namespace:       o.Namespace,
			Source:          o.Key,
			Location:        o.Source,
			Ports:           ports,
			Addresses:       addresses,
			Resolution:      se.Resolution,
			ExportTo:        visibility(se.ExportTo, o.Namespace),
			MeshExternal:    se.Location == networking.ServiceEntry_MESH_EXTERNAL,
			SubjectAltNames: se.SubjectAltNames,
			Endpoints:       eps,
			inputs:          inputs,
		})
	}
}

func endpoint(we *networking.WorkloadEntry, ns string, src config.Key) *Endpoint {
	return &Endpoint{
		Address:        we.Address,
		Ports:          we.Ports,
		Labels:         we.Labels,
		Locality:       we.Locality,
		Weight:         we.Weight,
		ServiceAccount: we.ServiceAccount,
		Namespace:      ns,
		Source:         src,
	}
}

// addressString shows a single-address prefix as the address, as users write it.
func addressString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// serviceInputs are the decoded objects a Service is made of.
type serviceInputs struct {
	entry     *networking.ServiceEntry
	workloads []*networking.WorkloadEntry // selected, in name order
}

func (i serviceInputs) same(o serviceInputs) bool {
	return i.entry == o.entry && slices.Equal(i.workloads, o.workloads)
}

// LabelsMatch reports whether every selector label is present with the same value.
func LabelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (b *builder) service(host string) *Service {
	i, found := slices.BinarySearchFunc(b.snap.Services, host, func(s *Service, h string) int { return cmp.Compare(s.Hostname, h) })
	if !found {
		return nil
	}
	return b.snap.Services[i]
}

func (b *builder) checkServices() {
	// Sidecars tell services on a port apart by address: an address claimed twice on
	// a port goes to the first service by host name.
	type portAddress struct {
		port    uint32
		address netip.Prefix
	}
	claimed := map[portAddress]*Service{}
	for _, svc := range b.snap.Services {
		for _, p := range svc.Ports {
			for _, a := range svc.Addresses {
				k := portAddress{p.Number, a}
				if first := claimed[k]; first == nil {
					claimed[k] = svc
				} else if first.Source != svc.Source {
					b.report(config.SeverityWarning, svc.Source, svc.Location, "address %s port %d is also claimed by %s (%s); sidecars send it to %s", addressString(a), p.Number, first.Hostname, first.Source, first.Hostname)
				}
			}
		}
	}
	// Istio's trap: auto mTLS never applies to a MESH_EXTERNAL service (the default
	// location), even to endpoints that say they take part in mesh mTLS.
	external := map[config.Key]bool{}
	for _, svc := range b.snap.Services {
		if !svc.MeshExternal || external[svc.Source] {
			continue
		}
		for _, ep := range svc.Endpoints {
			if ep.Labels[TLSModeLabel] == TLSModeIstio {
				external[svc.Source] = true
				b.report(config.SeverityWarning, svc.Source, svc.Location, "endpoint %s is labelled %s=%s but the service's location is MESH_EXTERNAL (the default): clients do not use mutual TLS towards it unless a DestinationRule says ISTIO_MUTUAL (set spec.location: MESH_INTERNAL for auto mTLS)", ep.Address, TLSModeLabel, TLSModeIstio)
				break
			}
		}
	}
	for i := 1; i < len(b.snap.Services); i++ {
		prev, cur := b.snap.Services[i-1], b.snap.Services[i]
		if prev.Hostname == cur.Hostname && prev.Namespace == cur.Namespace && prev.Source != cur.Source {
			b.report(config.SeverityWarning, cur.Source, cur.Location, "host %s is also declared by %s; the first by name is used", cur.Hostname, prev.Source)
		}
	}
}

func (b *builder) checkDestinationRules() {
	seen := map[string]config.Key{}
	for _, dr := range b.snap.DestinationRules {
		for _, field := range unsupportedTLS(dr.Spec) {
			b.report(config.SeverityWarning, dr.Key, dr.Source, "%s: only ISTIO_MUTUAL and DISABLE are supported yet (no certificates from files or secrets); ignored, so auto mTLS applies", field)
		}
		if b.service(dr.Host) == nil && !strings.Contains(dr.Host, "*") {
			b.report(config.SeverityWarning, dr.Key, dr.Source, "spec.host: no service %s is known", dr.Host)
		}
		k := dr.Key.Namespace + "/" + dr.Host
		if first, dup := seen[k]; dup {
			b.report(config.SeverityWarning, dr.Key, dr.Source, "spec.host: %s already has %s in this namespace; Istio does not merge them and only the first is used", dr.Host, first)
			continue
		}
		seen[k] = dr.Key
	}
}

func (b *builder) checkVirtualServices() {
	seen := map[string]config.Key{}
	for _, vs := range b.snap.VirtualServices {
		for i, h := range vs.Hosts {
			k := vs.Key.Namespace + "/" + h
			switch first, dup := seen[k]; {
			case !dup:
				seen[k] = vs.Key
			case first != vs.Key:
				b.report(config.SeverityWarning, vs.Key, vs.Source, "spec.hosts[%d]: %s is also routed by %s; Istio does not merge them for sidecars and only the first is used", i, h, first)
			}
		}
		if len(vs.Spec.Tcp) > 0 || len(vs.Spec.Tls) > 0 {
			b.report(config.SeverityWarning, vs.Key, vs.Source, "spec.tcp and spec.tls routes are not translated yet and are ignored")
		}
		for i, r := range vs.Spec.Http {
			for _, field := range unsupportedHTTPFields(r) {
				b.report(config.SeverityWarning, vs.Key, vs.Source, "spec.http[%d].%s is not translated yet and is ignored", i, field)
			}
			for j, d := range r.Route {
				field := fmt.Sprintf("spec.http[%d].route[%d].destination", i, j)
				b.checkDestination(vs, field, d.Destination)
			}
		}
	}
}

// unsupportedHTTPFields names the fields of an HTTP route that the translators do not
// implement yet, so that users learn they are ignored.
func unsupportedHTTPFields(r *networking.HTTPRoute) []string {
	var out []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"redirect", r.Redirect != nil}, {"directResponse", r.DirectResponse != nil}, {"delegate", r.Delegate != nil},
		{"rewrite", r.Rewrite != nil}, {"fault", r.Fault != nil}, {"mirror", r.Mirror != nil || len(r.Mirrors) > 0},
		{"corsPolicy", r.CorsPolicy != nil}, {"headers", r.Headers != nil},
	} {
		if f.set {
			out = append(out, f.name)
		}
	}
	for _, m := range r.Match {
		if len(m.SourceLabels) > 0 {
			out = append(out, "match[].sourceLabels (such a condition never matches yet)")
			break
		}
	}
	for _, d := range r.Route {
		if d.Headers != nil {
			out = append(out, "route[].headers")
			break
		}
	}
	return out
}

func (b *builder) checkDestination(vs *VirtualService, field string, d *networking.Destination) {
	host := ResolveHost(d.Host, vs.Key.Namespace)
	svc := b.service(host)
	if svc == nil {
		b.report(config.SeverityError, vs.Key, vs.Source, "%s.host: unknown host %s; this destination is left out", field, host)
		return
	}
	if n := d.GetPort().GetNumber(); n != 0 {
		if _, ok := svc.Port(n); !ok {
			b.report(config.SeverityError, vs.Key, vs.Source, "%s.port: service %s has no port %d; this destination is left out", field, host, n)
		}
	}
	if d.Subset == "" {
		return
	}
	for _, dr := range b.snap.DestinationRules {
		if dr.Host == host && dr.Subset(d.Subset) != nil {
			return
		}
	}
	b.report(config.SeverityError, vs.Key, vs.Source, "%s.subset: unknown subset %q of %s (no DestinationRule defines it); this destination is left out", field, d.Subset, host)
}

// SortedKeys returns a map's keys in order; used wherever map iteration would make
// generated config nondeterministic.
func SortedKeys[M ~map[string]V, V any](m M) []string {
	return slices.Sorted(maps.Keys(m))
}

// unsupportedTLS names the TLS settings of a DestinationRule with a mode Palisade
// does not implement (SIMPLE and MUTUAL need the user's certificates).
func unsupportedTLS(dr *networking.DestinationRule) []string {
	var out []string
	check := func(field string, tp *networking.TrafficPolicy) {
		if tp == nil {
			return
		}
		if m := tp.GetTls().GetMode(); m == networking.ClientTLSSettings_SIMPLE || m == networking.ClientTLSSettings_MUTUAL {
			out = append(out, fmt.Sprintf("%s.tls.mode %s", field, m))
		}
		for i, pl := range tp.PortLevelSettings {
			if m := pl.GetTls().GetMode(); m == networking.ClientTLSSettings_SIMPLE || m == networking.ClientTLSSettings_MUTUAL {
				out = append(out, fmt.Sprintf("%s.portLevelSettings[%d].tls.mode %s", field, i, m))
			}
		}
	}
	check("spec.trafficPolicy", dr.TrafficPolicy)
	for i, ss := range dr.Subsets {
		check(fmt.Sprintf("spec.subsets[%d].trafficPolicy", i), ss.GetTrafficPolicy())
	}
	return out
}
