package kubesource

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// strip is the informers' cache.TransformFunc: it keeps only what the source reads,
// so that palisaded stays small in a large cluster (with 1,000 Services and 5,000
// pods the source holds about half the memory it would without it; real pods, with
// their status, gain more). Every object keeps its name, namespace, UID, resource
// version, generation and deletion time and loses its managed fields, owner
// references, finalizers, creation time and annotations; beyond that:
//
//   - Service: the networking.istio.io/exportTo annotation, no labels; from the
//     spec only type, cluster IPs, external name and ports (selectors, session
//     affinity, traffic policies and the status go).
//   - EndpointSlice: only the kubernetes.io/service-name label; address type, ports
//     and, per endpoint, the addresses, the ready condition, node name and target
//     reference kind, namespace and name (hostnames, zones, hints and the other
//     conditions go).
//   - Pod: labels, service account and node name; the containers, volumes and the
//     whole status (the EndpointSlice says whether a pod is ready).
//   - Node: the three locality labels; spec and status (images, addresses,
//     conditions: the bulk of a node) go.
//   - CustomResourceDefinition: for Palisade's kinds the group, names, versions
//     without their schemas, and the condition types and statuses; other CRDs keep
//     their name only.
//   - Custom resources: metadata name, namespace, UID, resource version,
//     generation and labels, the spec, and status.conditions (the status writer
//     compares with them).
//
// Custom resources are changed in place, which client-go allows since 1.27; the
// other objects are replaced by smaller ones. The function is idempotent. Anything
// else (such as a tombstone) passes unchanged.
func strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		return stripService(o), nil
	case *discoveryv1.EndpointSlice:
		return stripEndpointSlice(o), nil
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: metadata(o.ObjectMeta, o.Labels),
			Spec:       corev1.PodSpec{ServiceAccountName: o.Spec.ServiceAccountName, NodeName: o.Spec.NodeName},
		}, nil
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: metadata(o.ObjectMeta, only(o.Labels, regionLabel, zoneLabel, subzoneLabel))}, nil
	case *apiextensionsv1.CustomResourceDefinition:
		return stripCRD(o), nil
	case *unstructured.Unstructured:
		stripCustomResource(o)
		return o, nil
	}
	return obj, nil
}

// metadata keeps the identity of an object and the given labels.
func metadata(m metav1.ObjectMeta, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Generation:        m.Generation,
		DeletionTimestamp: m.DeletionTimestamp,
		Labels:            labels,
	}
}

// only returns the entries of m with the given keys, or nil if there are none.
func only(m map[string]string, keys ...string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}

func stripService(s *corev1.Service) *corev1.Service {
	out := &corev1.Service{
		ObjectMeta: metadata(s.ObjectMeta, nil),
		Spec: corev1.ServiceSpec{
			Type:         s.Spec.Type,
			ClusterIP:    s.Spec.ClusterIP,
			ClusterIPs:   s.Spec.ClusterIPs,
			ExternalName: s.Spec.ExternalName,
			Ports:        s.Spec.Ports,
		},
	}
	out.Annotations = only(s.Annotations, exportToAnnotation)
	return out
}

func stripEndpointSlice(s *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		ObjectMeta:  metadata(s.ObjectMeta, only(s.Labels, discoveryv1.LabelServiceName)),
		AddressType: s.AddressType,
		Ports:       s.Ports,
		Endpoints:   make([]discoveryv1.Endpoint, len(s.Endpoints)),
	}
	for i, ep := range s.Endpoints {
		out.Endpoints[i] = discoveryv1.Endpoint{
			Addresses:  ep.Addresses,
			Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready},
			NodeName:   ep.NodeName,
		}
		if r := ep.TargetRef; r != nil {
			out.Endpoints[i].TargetRef = &corev1.ObjectReference{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
		}
	}
	return out
}

func stripCRD(c *apiextensionsv1.CustomResourceDefinition) *apiextensionsv1.CustomResourceDefinition {
	out := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metadata(c.ObjectMeta, nil)}
	if !isPalisadeCRD(c.Name) {
		return out
	}
	out.Spec.Group = c.Spec.Group
	out.Spec.Names = apiextensionsv1.CustomResourceDefinitionNames{Plural: c.Spec.Names.Plural, Kind: c.Spec.Names.Kind}
	for _, v := range c.Spec.Versions {
		out.Spec.Versions = append(out.Spec.Versions, apiextensionsv1.CustomResourceDefinitionVersion{Name: v.Name, Served: v.Served, Storage: v.Storage})
	}
	for _, cond := range c.Status.Conditions {
		out.Status.Conditions = append(out.Status.Conditions, apiextensionsv1.CustomResourceDefinitionCondition{Type: cond.Type, Status: cond.Status})
	}
	return out
}

func isPalisadeCRD(name string) bool {
	for _, k := range crdKinds {
		if k.crdName() == name {
			return true
		}
	}
	return false
}

func stripCustomResource(u *unstructured.Unstructured) {
	meta := map[string]any{}
	for _, field := range []string{"name", "namespace", "uid", "resourceVersion", "generation", "labels"} {
		if v, ok := u.Object["metadata"].(map[string]any)[field]; ok {
			meta[field] = v
		}
	}
	u.Object["metadata"] = meta
	if conditions, ok, _ := unstructured.NestedFieldNoCopy(u.Object, "status", "conditions"); ok {
		u.Object["status"] = map[string]any{"conditions": conditions}
	} else {
		delete(u.Object, "status")
	}
}
