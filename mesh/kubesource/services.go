package kubesource

import (
	"fmt"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// serviceState is what the source knows of one Kubernetes Service.
type serviceState struct {
	// served is the ServiceEntry standing for the Service, or its last valid version
	// when the current one is invalid; Spec is nil when there is none.
	served  config.Object
	invalid bool
	diags   []config.Diagnostic
	refs    references
}

// updateService converts a Service again, with its EndpointSlices, pods and nodes.
func (s *Source) updateService(key types.NamespacedName) {
	old := s.services[key]
	if old != nil {
		s.unindex(key, old.refs)
		delete(s.services, key)
	}
	svc, err := s.listers.services.Services(key.Namespace).Get(key.Name)
	if err != nil {
		return // deleted
	}
	var endpointSlices []*discoveryv1.EndpointSlice
	indexed, _ := s.listers.slices.ByIndex(byServiceIndex, key.String())
	for _, o := range indexed {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			endpointSlices = append(endpointSlices, es)
		}
	}
	spec, refs := serviceEntry(svc, endpointSlices, s.workloads)
	s.index(key, refs)
	st := &serviceState{refs: refs}
	s.services[key] = st
	if spec == nil {
		return // no TCP port: not part of the mesh
	}
	src := serviceSource(key.Namespace, key.Name)
	obj := config.Object{
		Key:    config.Key{Kind: config.KindServiceEntry, Namespace: key.Namespace, Name: key.Name},
		Source: src,
		Spec:   spec,
	}
	var prev config.Object
	if old != nil {
		prev = old.served
	}
	if err := config.Validate(obj); err != nil {
		st.invalid = true
		st.diags = []config.Diagnostic{{
			Severity: config.SeverityError, Source: obj.Source, Object: obj.Key,
			Message: fmt.Sprintf("the Service cannot be served as a ServiceEntry: %v", err),
		}}
		obj = config.Object{}
	}
	var kept []config.Diagnostic
	st.served, kept = lastGood(prev, obj, src)
	st.diags = append(st.diags, kept...)
}

// index records the pods and nodes a Service's conversion read; unindex forgets them.
func (s *Source) index(key types.NamespacedName, refs references) {
	for _, p := range refs.pods {
		s.podServices[p] = addService(s.podServices[p], key)
	}
	for _, n := range refs.nodes {
		s.nodeServices[n] = addService(s.nodeServices[n], key)
	}
}

func (s *Source) unindex(key types.NamespacedName, refs references) {
	for _, p := range refs.pods {
		if s.podServices[p] = removeService(s.podServices[p], key); len(s.podServices[p]) == 0 {
			delete(s.podServices, p)
		}
	}
	for _, n := range refs.nodes {
		if s.nodeServices[n] = removeService(s.nodeServices[n], key); len(s.nodeServices[n]) == 0 {
			delete(s.nodeServices, n)
		}
	}
}

// The indexes hold slices rather than sets: most pods are endpoints of one or two
// Services, and a map per pod would cost more than the pod itself.

func addService(list []types.NamespacedName, key types.NamespacedName) []types.NamespacedName {
	if slices.Contains(list, key) {
		return list
	}
	return append(list, key)
}

func removeService(list []types.NamespacedName, key types.NamespacedName) []types.NamespacedName {
	return slices.DeleteFunc(list, func(k types.NamespacedName) bool { return k == key })
}
