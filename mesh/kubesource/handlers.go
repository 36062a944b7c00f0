package kubesource

import (
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsinformers "k8s.io/apiextensions-apiserver/pkg/client/informers/externalversions"
	apiextensionslisters "k8s.io/apiextensions-apiserver/pkg/client/listers/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// byServiceIndex indexes EndpointSlices by the namespace/name of their Service.
const byServiceIndex = "service"

// changes are what the event handlers saw since the loop last looked.
type changes struct {
	services  sets.Set[types.NamespacedName] // a Service or one of its EndpointSlices
	pods      sets.Set[types.NamespacedName]
	nodes     sets.Set[string]
	resources bool // a custom resource, or the kinds whose informers have synced
	crds      bool
}

type listers struct {
	services corelisters.ServiceLister
	slices   cache.Indexer
	crds     apiextensionslisters.CustomResourceDefinitionLister
}

func newChanges() changes {
	return changes{services: sets.New[types.NamespacedName](), pods: sets.New[types.NamespacedName](), nodes: sets.New[string]()}
}

// watch creates the informers and registers the event handlers; it returns the
// registrations, synced when their handlers have seen every object listed.
func (s *Source) watch(core informers.SharedInformerFactory, ext apiextensionsinformers.SharedInformerFactory) ([]cache.InformerSynced, error) {
	services := core.Core().V1().Services()
	endpointSlices := core.Discovery().V1().EndpointSlices()
	pods := core.Core().V1().Pods()
	nodes := core.Core().V1().Nodes()
	crds := ext.Apiextensions().V1().CustomResourceDefinitions()
	if err := endpointSlices.Informer().AddIndexers(cache.Indexers{byServiceIndex: sliceService}); err != nil {
		return nil, fmt.Errorf("indexing EndpointSlices: %w", err)
	}
	s.listers = listers{services: services.Lister(), slices: endpointSlices.Informer().GetIndexer(), crds: crds.Lister()}
	podLister, nodeLister := pods.Lister(), nodes.Lister()
	s.workloads = workloads{
		pod: func(ns, name string) *corev1.Pod {
			p, _ := podLister.Pods(ns).Get(name)
			return p
		},
		node: func(name string) *corev1.Node {
			n, _ := nodeLister.Get(name)
			return n
		},
	}

	handlers := []struct {
		resource string
		informer cache.SharedIndexInformer
		same     func(old, cur any) bool
		record   func(metav1.Object, *changes)
	}{
		{"services", services.Informer(), nil, recordService},
		{"endpointslices", endpointSlices.Informer(), nil, recordEndpointSlice},
		{"pods", pods.Informer(), samePod, recordPod},
		{"nodes", nodes.Informer(), sameLabels, recordNode},
		{"customresourcedefinitions", crds.Informer(), nil, recordCRD},
	}
	var synced []cache.InformerSynced
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandler(s.handler(h.resource, h.same, h.record))
		if err != nil {
			return nil, fmt.Errorf("watching %s: %w", h.resource, err)
		}
		synced = append(synced, reg.HasSynced)
	}
	return synced, nil
}

// handler returns event handlers that record each event's object with record and
// wake the loop. An update of both the old and the new object records both; it is
// ignored when same says that nothing the source reads changed. A delete whose final
// state was missed records the last state known (cache.DeletedFinalStateUnknown).
// Handlers never block on the loop.
func (s *Source) handler(resource string, same func(old, cur any) bool, record func(metav1.Object, *changes)) cache.ResourceEventHandler {
	events := s.metrics.events.WithLabelValues(resource)
	note := func(objs ...any) {
		events.Inc()
		s.mu.Lock()
		for _, obj := range objs {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if o, err := meta.Accessor(obj); err == nil {
				record(o, &s.pending)
			}
		}
		s.mu.Unlock()
		s.signal()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { note(obj) },
		UpdateFunc: func(old, cur any) {
			if same == nil || !same(old, cur) {
				note(old, cur)
			}
		},
		DeleteFunc: func(obj any) { note(obj) },
	}
}

// The record functions of the handlers: what an event of each resource changes.

func recordService(o metav1.Object, c *changes) {
	c.services.Insert(types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()})
}

func recordEndpointSlice(o metav1.Object, c *changes) {
	if name := o.GetLabels()[discoveryv1.LabelServiceName]; name != "" {
		c.services.Insert(types.NamespacedName{Namespace: o.GetNamespace(), Name: name})
	}
}

func recordPod(o metav1.Object, c *changes) {
	c.pods.Insert(types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()})
}

func recordNode(o metav1.Object, c *changes) { c.nodes.Insert(o.GetName()) }

func recordCRD(o metav1.Object, c *changes) { c.crds = c.crds || isPalisadeCRD(o.GetName()) }

// recordResource has the loop list the kind again: its conversion cache makes
// that cheap.
func recordResource(_ metav1.Object, c *changes) { c.resources = true }

// markResourcesChanged records that custom resources must be read again.
func (s *Source) markResourcesChanged() {
	s.mu.Lock()
	s.pending.resources = true
	s.mu.Unlock()
	s.signal()
}

// signal wakes the loop without waiting: a wake-up already pending stands for this
// one too.
func (s *Source) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// samePod reports whether two versions of a Pod agree on what endpoints take from
// it (after strip, that is all a cached Pod holds besides its resource version).
func samePod(old, cur any) bool {
	o, ok1 := old.(*corev1.Pod)
	c, ok2 := cur.(*corev1.Pod)
	return ok1 && ok2 && maps.Equal(o.Labels, c.Labels) &&
		o.Spec.ServiceAccountName == c.Spec.ServiceAccountName && o.Spec.NodeName == c.Spec.NodeName
}

// sameLabels reports whether two versions of an object have the same labels (after
// strip, a Node's locality labels).
func sameLabels(old, cur any) bool {
	o, err1 := meta.Accessor(old)
	c, err2 := meta.Accessor(cur)
	return err1 == nil && err2 == nil && maps.Equal(o.GetLabels(), c.GetLabels())
}

// sliceService is the index function of byServiceIndex.
func sliceService(obj any) ([]string, error) {
	o, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	if name := o.GetLabels()[discoveryv1.LabelServiceName]; name != "" {
		return []string{o.GetNamespace() + "/" + name}, nil
	}
	return nil, nil
}
