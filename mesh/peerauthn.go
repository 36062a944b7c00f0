package mesh

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// MTLSMode is how a workload accepts connections: Istio's PeerAuthentication modes.
type MTLSMode uint8

const (
	// MTLSUnset inherits the mode of the level above; it is never an effective mode.
	MTLSUnset MTLSMode = iota
	// MTLSDisable accepts plaintext only (TLS is not terminated by the mesh).
	MTLSDisable
	// MTLSPermissive accepts mutual TLS and plaintext.
	MTLSPermissive
	// MTLSStrict accepts mutual TLS only.
	MTLSStrict
)

func (m MTLSMode) String() string {
	switch m {
	case MTLSDisable:
		return "DISABLE"
	case MTLSPermissive:
		return "PERMISSIVE"
	case MTLSStrict:
		return "STRICT"
	}
	return "UNSET"
}

func mtlsMode(m *security.PeerAuthentication_MutualTLS) MTLSMode {
	switch m.GetMode() {
	case security.PeerAuthentication_MutualTLS_DISABLE:
		return MTLSDisable
	case security.PeerAuthentication_MutualTLS_PERMISSIVE:
		return MTLSPermissive
	case security.PeerAuthentication_MutualTLS_STRICT:
		return MTLSStrict
	}
	return MTLSUnset
}

// TLSModeLabel is the workload label saying whether a workload takes part in mesh
// mTLS; clients use mutual TLS automatically towards endpoints where its value is
// TLSModeIstio (Istio's auto mTLS).
const (
	TLSModeLabel = "security.istio.io/tlsMode"
	TLSModeIstio = "istio"
)

// PeerAuthentication is a PeerAuthentication policy, read only.
type PeerAuthentication struct {
	Key    config.Key
	Source config.Source
	// Selector is nil for a namespace-wide policy (mesh-wide in RootNamespace).
	Selector map[string]string
	// Mode is MTLSUnset when the policy inherits its parent's mode.
	Mode MTLSMode
	// PortLevel overrides the mode on workload ports (MTLSUnset: the policy's mode).
	PortLevel map[uint32]MTLSMode
	Spec      *security.PeerAuthentication
}

func newPeerAuthentication(o config.Object, spec *security.PeerAuthentication) *PeerAuthentication {
	pa := &PeerAuthentication{Key: o.Key, Source: o.Source, Spec: spec, Mode: mtlsMode(spec.Mtls)}
	if sel := spec.GetSelector().GetMatchLabels(); len(sel) > 0 {
		pa.Selector = sel
	}
	if len(spec.PortLevelMtls) > 0 {
		pa.PortLevel = make(map[uint32]MTLSMode, len(spec.PortLevelMtls))
		for port, m := range spec.PortLevelMtls {
			pa.PortLevel[port] = mtlsMode(m)
		}
	}
	return pa
}

// PeerAuthentications indexes the policies of a snapshot for resolution. It is
// immutable; the nil value has no policies (every workload is PERMISSIVE).
type PeerAuthentications struct {
	all        []*PeerAuthentication            // namespace/name order
	mesh       *PeerAuthentication              // the root namespace's policy without selector
	namespaces map[string]*PeerAuthentication   // each namespace's policy without selector
	workloads  map[string][]*PeerAuthentication // policies with a selector, by namespace, in precedence order
}

// All returns every policy, in namespace/name order (including those that apply to
// nothing, such as a second namespace-wide policy).
func (p *PeerAuthentications) All() []*PeerAuthentication {
	if p == nil {
		return nil
	}
	return p.all
}

// PeerAuthenticationPolicies are the policies that apply to one workload, one per
// level; nil where a level has none.
type PeerAuthenticationPolicies struct {
	Mesh, Namespace, Workload *PeerAuthentication
}

// ForWorkload returns the policies that apply to a workload of namespace ns with
// the given labels, as Istio selects them: the mesh-wide policy, the namespace's
// policy without selector, and the first (in namespace/name order, standing in for
// Istio's oldest) policy of the namespace whose selector matches the labels. Policies
// with a selector in the root namespace apply to no workload, as in Istio.
func (p *PeerAuthentications) ForWorkload(ns string, labels map[string]string) PeerAuthenticationPolicies {
	if p == nil {
		return PeerAuthenticationPolicies{}
	}
	out := PeerAuthenticationPolicies{Mesh: p.mesh}
	if ns != RootNamespace {
		out.Namespace = p.namespaces[ns]
		for _, pa := range p.workloads[ns] {
			if LabelsMatch(pa.Selector, labels) {
				out.Workload = pa
				break
			}
		}
	}
	return out
}

// ForNamespace returns the mesh-wide and namespace-wide policies of namespace ns:
// what applies to a workload that no selector picks.
func (p *PeerAuthentications) ForNamespace(ns string) PeerAuthenticationPolicies {
	if p == nil {
		return PeerAuthenticationPolicies{}
	}
	out := PeerAuthenticationPolicies{Mesh: p.mesh}
	if ns != RootNamespace {
		out.Namespace = p.namespaces[ns]
	}
	return out
}

// HasWorkloadPolicies reports whether some policy of namespace ns has a selector,
// so that workloads there may differ from the namespace's mode.
func (p *PeerAuthentications) HasWorkloadPolicies(ns string) bool {
	return p != nil && len(p.workloads[ns]) > 0 && ns != RootNamespace
}

// ByKey returns the policy with the given key, or nil.
func (p *PeerAuthentications) ByKey(k config.Key) *PeerAuthentication {
	if p == nil || k == (config.Key{}) {
		return nil
	}
	i, found := slices.BinarySearchFunc(p.all, k, func(pa *PeerAuthentication, k config.Key) int {
		return cmp.Or(cmp.Compare(pa.Key.Namespace, k.Namespace), cmp.Compare(pa.Key.Name, k.Name))
	})
	if !found {
		return nil
	}
	return p.all[i]
}

// MTLS is the effective peer authentication of a workload.
type MTLS struct {
	Mode MTLSMode // never MTLSUnset
	// PerPort overrides Mode on workload ports; nil when there is no override.
	PerPort map[uint32]MTLSMode
}

// ModeFor returns the mode on a workload port.
func (m MTLS) ModeFor(port uint32) MTLSMode {
	if mode, ok := m.PerPort[port]; ok {
		return mode
	}
	return m.Mode
}

// Equal reports whether two effective policies are the same.
func (m MTLS) Equal(o MTLS) bool { return m.Mode == o.Mode && maps.Equal(m.PerPort, o.PerPort) }

// Ports returns the ports with an override, sorted.
func (m MTLS) Ports() []uint32 { return slices.Sorted(maps.Keys(m.PerPort)) }

// Effective composes the policies as Istio does: PERMISSIVE when nothing is
// configured; each level that sets a mode (not UNSET) overrides the level above
// (mesh, then namespace, then workload); the workload policy's port-level settings
// override the result on their ports, an UNSET port taking the workload's mode.
func (p PeerAuthenticationPolicies) Effective() MTLS {
	m := MTLS{Mode: MTLSPermissive}
	for _, pa := range []*PeerAuthentication{p.Mesh, p.Namespace, p.Workload} {
		if pa != nil && pa.Mode != MTLSUnset {
			m.Mode = pa.Mode
		}
	}
	if w := p.Workload; w != nil && len(w.PortLevel) > 0 {
		m.PerPort = make(map[uint32]MTLSMode, len(w.PortLevel))
		for port, mode := range w.PortLevel {
			if mode == MTLSUnset {
				mode = m.Mode
			}
			m.PerPort[port] = mode
		}
	}
	return m
}

// indexPeerAuthentications indexes the policies (in namespace/name order) and
// reports what Istio would ignore: a second policy without selector in a
// namespace (the first by name wins, where Istio takes the oldest), policies whose
// selectors pick the same workloads (likewise), and selectors in the root namespace.
func (b *builder) indexPeerAuthentications(all []*PeerAuthentication) *PeerAuthentications {
	p := &PeerAuthentications{all: all, namespaces: map[string]*PeerAuthentication{}, workloads: map[string][]*PeerAuthentication{}}
	for _, pa := range all {
		ns := pa.Key.Namespace
		switch {
		case pa.Selector == nil:
			first := p.namespaces[ns]
			if ns == RootNamespace {
				first = p.mesh
			}
			if first != nil {
				b.report(config.SeverityWarning, pa.Key, pa.Source, "namespace %s already has the policy without selector %s; Istio applies the oldest, Palisade the first by name: this one is ignored", ns, first.Key.Name)
				continue
			}
			if ns == RootNamespace {
				p.mesh = pa
			} else {
				p.namespaces[ns] = pa
			}
		case ns == RootNamespace:
			b.report(config.SeverityWarning, pa.Key, pa.Source, "spec.selector: a policy with a selector in the root namespace %s applies to no workload (as in Istio); it is ignored", RootNamespace)
		default:
			for _, first := range p.workloads[ns] {
				if msg := overlap(first, pa, b.workloads[ns]); msg != "" {
					b.report(config.SeverityWarning, pa.Key, pa.Source, "spec.selector: %s", msg)
					break
				}
			}
			p.workloads[ns] = append(p.workloads[ns], pa)
		}
	}
	return p
}

// overlap describes how policy first (the first by name) and policy pa certainly
// select common workloads, or returns "": when one selector's labels include the
// other's, or when a known WorkloadEntry matches both.
func overlap(first, pa *PeerAuthentication, workloads []config.Object) string {
	const rule = "the first by name applies where both select (Istio applies the oldest)"
	switch {
	case LabelsMatch(first.Selector, pa.Selector):
		return fmt.Sprintf("every workload it selects is also selected by %s; %s, so this policy applies to no workload", first.Key.Name, rule)
	case LabelsMatch(pa.Selector, first.Selector):
		return fmt.Sprintf("it also selects every workload %s selects; %s", first.Key.Name, rule)
	}
	for _, w := range workloads {
		labels := w.Spec.(*networking.WorkloadEntry).GetLabels()
		if LabelsMatch(first.Selector, labels) && LabelsMatch(pa.Selector, labels) {
			return fmt.Sprintf("WorkloadEntry %s is also selected by %s; %s", w.Name, first.Key.Name, rule)
		}
	}
	return ""
}
