package mesh

import (
	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/config/policypb"
)

// AuthorizationPolicy is an AuthorizationPolicy, read only. The policy engine reads
// its Spec; Palisade does not translate it otherwise.
type AuthorizationPolicy struct {
	Key    config.Key
	Source config.Source
	Spec   *security.AuthorizationPolicy
}

// RequestAuthentication is a RequestAuthentication, read only.
type RequestAuthentication struct {
	Key    config.Key
	Source config.Source
	Spec   *security.RequestAuthentication
}

// RegoPolicy is a RegoPolicy, read only. Its module is kept as text (Spec.Rego): the
// policy engine compiles it.
type RegoPolicy struct {
	Key    config.Key
	Source config.Source
	Spec   *policypb.RegoPolicy
}

func (p *AuthorizationPolicy) input() (proto.Message, config.Source)   { return p.Spec, p.Source }
func (p *RequestAuthentication) input() (proto.Message, config.Source) { return p.Spec, p.Source }
func (p *RegoPolicy) input() (proto.Message, config.Source)            { return p.Spec, p.Source }

// AppliesTo reports whether the policy applies to a workload of namespace ns with
// the given labels (see PolicySelects).
func (p *AuthorizationPolicy) AppliesTo(ns string, labels map[string]string) bool {
	return PolicySelects(p.Key.Namespace, p.Spec.GetSelector().GetMatchLabels(), ns, labels)
}

// AppliesTo reports whether the policy applies to a workload of namespace ns with
// the given labels (see PolicySelects).
func (p *RequestAuthentication) AppliesTo(ns string, labels map[string]string) bool {
	return PolicySelects(p.Key.Namespace, p.Spec.GetSelector().GetMatchLabels(), ns, labels)
}

// AppliesTo reports whether the policy applies to a workload of namespace ns with
// the given labels (see PolicySelects).
func (p *RegoPolicy) AppliesTo(ns string, labels map[string]string) bool {
	return PolicySelects(p.Key.Namespace, p.Spec.GetSelector().GetMatchLabels(), ns, labels)
}

// Decision returns the name of the module's rule that holds the decision:
// spec.decision, or config.DefaultDecision when it is left out.
func (p *RegoPolicy) Decision() string {
	if d := p.Spec.GetDecision(); d != "" {
		return d
	}
	return config.DefaultDecision
}

// PolicySelects reports whether a policy of namespace policyNS with the given
// selector (nil or empty: none) applies to a workload of namespace ns with the
// given labels, as Istio selects workloads for AuthorizationPolicy and
// RequestAuthentication: a policy of the root namespace applies in every
// namespace, any other policy in its own namespace only; there, a policy without
// selector applies to every workload, one with a selector to the workloads whose
// labels include all of its labels.
func PolicySelects(policyNS string, selector map[string]string, ns string, labels map[string]string) bool {
	if policyNS != ns && policyNS != RootNamespace {
		return false
	}
	return LabelsMatch(selector, labels)
}

// NeedsExtAuthz reports whether requests to a workload of namespace ns with the
// given labels must be decided by the policy engine (ext_authz): when a CUSTOM
// AuthorizationPolicy or a RegoPolicy (with or without provider) applies to it.
// ALLOW, DENY and AUDIT policies alone do not need it.
func (s *Snapshot) NeedsExtAuthz(ns string, labels map[string]string) bool {
	if s == nil {
		return false
	}
	for _, p := range s.AuthorizationPolicies {
		if p.Spec.GetAction() == security.AuthorizationPolicy_CUSTOM && p.AppliesTo(ns, labels) {
			return true
		}
	}
	for _, p := range s.RegoPolicies {
		if p.AppliesTo(ns, labels) {
			return true
		}
	}
	return false
}

// checkPolicies reports CUSTOM AuthorizationPolicies and RegoPolicies that do not
// meet: a CUSTOM policy whose provider is no RegoPolicy's (the requests it matches
// are denied), and a RegoPolicy provider that no CUSTOM policy names (it is never
// consulted).
func (b *builder) checkPolicies() {
	providers := map[string]bool{} // provider names of RegoPolicies
	for _, p := range b.snap.RegoPolicies {
		if name := p.Spec.GetProvider(); name != "" {
			providers[name] = true
		}
	}
	named := map[string]bool{} // provider names of CUSTOM policies
	for _, p := range b.snap.AuthorizationPolicies {
		if p.Spec.GetAction() != security.AuthorizationPolicy_CUSTOM {
			continue
		}
		name := p.Spec.GetProvider().GetName()
		named[name] = true
		if !providers[name] {
			b.report(config.SeverityWarning, p.Key, p.Source, "spec.provider.name: no RegoPolicy has provider %q; the requests this policy matches are denied", name)
		}
	}
	for _, p := range b.snap.RegoPolicies {
		if name := p.Spec.GetProvider(); name != "" && !named[name] {
			b.report(config.SeverityWarning, p.Key, p.Source, "spec.provider: no CUSTOM AuthorizationPolicy names provider %q; this RegoPolicy is never consulted", name)
		}
	}
}
