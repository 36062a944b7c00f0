package kubesource

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// bulky is metadata with everything strip drops.
func bulky(name, namespace string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: name, Namespace: namespace, UID: types.UID("uid-" + name), ResourceVersion: "42", Generation: 3, Labels: labels,
		Annotations:       map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}", exportToAnnotation: "."},
		ManagedFields:     []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
		OwnerReferences:   []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "rs"}},
		Finalizers:        []string{"f"},
		CreationTimestamp: metav1.Now(),
	}
}

// kept is the metadata strip keeps of bulky.
func kept(name, namespace string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, UID: types.UID("uid-" + name), ResourceVersion: "42", Generation: 3, Labels: labels}
}

func TestStrip(t *testing.T) {
	ports := []corev1.ServicePort{{Name: "http", Port: 80}}
	schema := &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{Type: "object"}}
	crdSpec := apiextensionsv1.CustomResourceDefinitionSpec{
		Group: "networking.istio.io", Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "virtualservices", Kind: "VirtualService", ShortNames: []string{"vs"}},
		Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true, Schema: schema}},
	}
	crdStatus := apiextensionsv1.CustomResourceDefinitionStatus{
		Conditions:     []apiextensionsv1.CustomResourceDefinitionCondition{{Type: apiextensionsv1.Established, Status: apiextensionsv1.ConditionTrue, Message: "the initial names have been accepted"}},
		StoredVersions: []string{"v1"},
	}
	tests := []struct {
		name     string
		in, want any
	}{
		{
			name: "Service",
			in: &corev1.Service{ObjectMeta: bulky("reviews", "shop", map[string]string{"app": "reviews"}), Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.0.0.1", ClusterIPs: []string{"10.0.0.1"}, Ports: ports,
				Selector: map[string]string{"app": "reviews"}, SessionAffinity: corev1.ServiceAffinityClientIP,
			}, Status: corev1.ServiceStatus{Conditions: []metav1.Condition{{Type: "x"}}}},
			want: &corev1.Service{ObjectMeta: func() metav1.ObjectMeta {
				m := kept("reviews", "shop", nil)
				m.Annotations = map[string]string{exportToAnnotation: "."}
				return m
			}(), Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.0.0.1", ClusterIPs: []string{"10.0.0.1"}, Ports: ports}},
		},
		{
			name: "EndpointSlice",
			in: &discoveryv1.EndpointSlice{
				ObjectMeta:  bulky("reviews-a", "shop", map[string]string{discoveryv1.LabelServiceName: "reviews", discoveryv1.LabelManagedBy: "controller"}),
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints: []discoveryv1.Endpoint{{
					Addresses:  []string{"10.1.0.1"},
					Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)},
					Hostname:   ptr.To("r1"), NodeName: ptr.To("n1"), Zone: ptr.To("z"),
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "r1", UID: "u", ResourceVersion: "9"},
					Hints:     &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z"}}},
				}},
			},
			want: &discoveryv1.EndpointSlice{
				ObjectMeta:  kept("reviews-a", "shop", map[string]string{discoveryv1.LabelServiceName: "reviews"}),
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints: []discoveryv1.Endpoint{{
					Addresses: []string{"10.1.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("n1"),
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "r1"},
				}},
			},
		},
		{
			name: "Pod",
			in: &corev1.Pod{
				ObjectMeta: bulky("r1", "shop", map[string]string{"app": "reviews"}),
				Spec: corev1.PodSpec{ServiceAccountName: "reviews", NodeName: "n1", Containers: []corev1.Container{{Name: "app", Image: "reviews", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}}},
					Volumes: []corev1.Volume{{Name: "v"}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.1"},
			},
			want: &corev1.Pod{ObjectMeta: kept("r1", "shop", map[string]string{"app": "reviews"}), Spec: corev1.PodSpec{ServiceAccountName: "reviews", NodeName: "n1"}},
		},
		{
			name: "Node",
			in: &corev1.Node{
				ObjectMeta: bulky("n1", "", map[string]string{regionLabel: "eu", zoneLabel: "eu-1a", subzoneLabel: "r7", "kubernetes.io/os": "linux"}),
				Status:     corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"big"}}}},
			},
			want: &corev1.Node{ObjectMeta: kept("n1", "", map[string]string{regionLabel: "eu", zoneLabel: "eu-1a", subzoneLabel: "r7"})},
		},
		{
			name: "Palisade's CRD",
			in:   &apiextensionsv1.CustomResourceDefinition{ObjectMeta: bulky("virtualservices.networking.istio.io", "", nil), Spec: crdSpec, Status: crdStatus},
			want: &apiextensionsv1.CustomResourceDefinition{
				ObjectMeta: kept("virtualservices.networking.istio.io", "", nil),
				Spec: apiextensionsv1.CustomResourceDefinitionSpec{
					Group: "networking.istio.io", Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "virtualservices", Kind: "VirtualService"},
					Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true}},
				},
				Status: apiextensionsv1.CustomResourceDefinitionStatus{Conditions: []apiextensionsv1.CustomResourceDefinitionCondition{{Type: apiextensionsv1.Established, Status: apiextensionsv1.ConditionTrue}}},
			},
		},
		{
			name: "another CRD",
			in:   &apiextensionsv1.CustomResourceDefinition{ObjectMeta: bulky("widgets.example.com", "", nil), Spec: crdSpec, Status: crdStatus},
			want: &apiextensionsv1.CustomResourceDefinition{ObjectMeta: kept("widgets.example.com", "", nil)},
		},
		{
			name: "custom resource",
			in: &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
				"metadata": map[string]any{
					"name": "reviews", "namespace": "shop", "uid": "u", "resourceVersion": "42", "generation": int64(3), "labels": map[string]any{"a": "b"},
					"annotations": map[string]any{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}, "managedFields": []any{map[string]any{"manager": "kubectl"}},
					"creationTimestamp": "2024-01-01T00:00:00Z",
				},
				"spec":   map[string]any{"hosts": []any{"reviews"}},
				"status": map[string]any{"conditions": []any{map[string]any{"type": "Reconciled"}}, "validationMessages": []any{"x"}},
			}},
			want: &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
				"metadata": map[string]any{"name": "reviews", "namespace": "shop", "uid": "u", "resourceVersion": "42", "generation": int64(3), "labels": map[string]any{"a": "b"}},
				"spec":     map[string]any{"hosts": []any{"reviews"}},
				"status":   map[string]any{"conditions": []any{map[string]any{"type": "Reconciled"}}},
			}},
		},
		{
			name: "tombstone",
			in:   cache.DeletedFinalStateUnknown{Key: "shop/reviews"},
			want: cache.DeletedFinalStateUnknown{Key: "shop/reviews"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := strip(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("stripped (-want +got):\n%s", diff)
			}
			again, _ := strip(got)
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("stripping twice changed the object (-once +twice):\n%s", diff)
			}
		})
	}
}
