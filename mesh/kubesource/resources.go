package kubesource

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"k8s.io/apiextensions-apiserver/pkg/apihelpers"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// customResource is what the source knows of one custom resource: the object it
// serves for it and the state of the version read last.
type customResource struct {
	resource        schema.GroupVersionResource
	namespace, name string
	uid             types.UID
	resourceVersion string
	generation      int64
	conditions      []metav1.Condition // status.conditions as read
	// served is this version, or the last valid one when this one is invalid; its
	// Spec is nil when there is none.
	served  config.Object
	invalid bool                // this version failed to decode or validate
	diags   []config.Diagnostic // the problems of this version
}

// convertResource decodes a custom resource with config.Decode, from its JSON, so
// that this source, the file source and the validating webhook agree on what is
// valid. prev is what was known of the object before (nil if nothing): when the
// resource version (and the version read at) is the same, prev is returned without
// decoding again; when the
// new version is invalid, prev's served object stays served (keep last good); when
// the new version has the same spec, prev's Spec is kept, so that mesh.BuildFrom
// reuses what it built from it (a status write changes the resource version only).
func convertResource(prev *customResource, k crdKind, gvr schema.GroupVersionResource, u *unstructured.Unstructured) *customResource {
	if prev != nil && prev.uid == u.GetUID() && prev.resource == gvr && u.GetResourceVersion() != "" && prev.resourceVersion == u.GetResourceVersion() {
		return prev
	}
	if prev != nil && prev.uid != u.GetUID() {
		prev = nil // deleted and created again: another object
	}
	r := &customResource{
		resource:        gvr,
		namespace:       u.GetNamespace(),
		name:            u.GetName(),
		uid:             u.GetUID(),
		resourceVersion: u.GetResourceVersion(),
		generation:      u.GetGeneration(),
		conditions:      conditions(u),
	}
	src := k.objectSource(r.namespace, r.name)
	objs, diags := decodeResource(src, u)
	var next config.Object
	if r.invalid = len(objs) != 1; !r.invalid {
		next = objs[0]
	}
	var previous config.Object
	if prev != nil {
		previous = prev.served
	}
	var kept []config.Diagnostic
	r.served, kept = lastGood(previous, next, src)
	r.diags = append(diags, kept...)
	return r
}

// lastGood chooses what to serve for an object's new version next (a zero Object
// when that version is invalid), given what was served before, prev: next when it
// is valid, with prev's Spec when the two are equal, so that mesh.BuildFrom reuses
// what it built from it; else prev, if there was one, with a warning saying so.
func lastGood(prev, next config.Object, src config.Source) (config.Object, []config.Diagnostic) {
	switch {
	case next.Spec != nil:
		if prev.Spec != nil && proto.Equal(prev.Spec, next.Spec) {
			next.Spec = prev.Spec
		}
		return next, nil
	case prev.Spec != nil:
		return prev, []config.Diagnostic{{
			Severity: config.SeverityWarning,
			Source:   src,
			Object:   prev.Key,
			Message:  "this version is invalid, so the last valid version is still served",
		}}
	}
	return config.Object{}, nil
}

func decodeResource(src config.Source, u *unstructured.Unstructured) ([]config.Object, []config.Diagnostic) {
	data, err := u.MarshalJSON()
	if err != nil {
		return nil, []config.Diagnostic{{
			Severity: config.SeverityError,
			Source:   src,
			Object:   config.Key{Kind: config.Kind(u.GetKind()), Namespace: u.GetNamespace(), Name: u.GetName()},
			Message:  fmt.Sprintf("cannot encode the object as JSON: %v", err),
		}}
	}
	return config.Decode(src.File, data)
}

// conditions reads status.conditions; conditions that are not well formed read as
// none (the status writer then writes its own).
func conditions(u *unstructured.Unstructured) []metav1.Condition {
	raw, ok, _ := unstructured.NestedFieldNoCopy(u.Object, "status")
	status, isMap := raw.(map[string]any)
	if !ok || !isMap {
		return nil
	}
	var out struct {
		Conditions []metav1.Condition `json:"conditions"`
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(status, &out); err != nil {
		return nil
	}
	return out.Conditions
}

// servedVersion returns the version of a CRD to watch its objects at: the storage
// version if it is served, else the first served version. It returns "" while the
// CRD is not established or is being deleted: then the kind is absent.
func servedVersion(crd *apiextensionsv1.CustomResourceDefinition) string {
	if crd.DeletionTimestamp != nil || !apihelpers.IsCRDConditionTrue(crd, apiextensionsv1.Established) {
		return ""
	}
	if v, err := apihelpers.GetCRDStorageVersion(crd); err == nil && apihelpers.HasServedCRDVersion(crd, v) {
		return v
	}
	for _, v := range crd.Spec.Versions {
		if v.Served {
			return v.Name
		}
	}
	return ""
}

// readResources converts the custom resources of every kind whose informer has
// synced; those of kinds no longer read are forgotten. A kind read again at
// another version keeps what was read at the old one until the new list is in.
func (s *Source) readResources() {
	next := make(map[string]*customResource, len(s.resources))
	for _, ki := range s.kinds {
		if !ki.informer.HasSynced() {
			for src, r := range s.resources {
				if r.resource.GroupResource() == ki.gvr.GroupResource() {
					next[src] = r
				}
			}
			continue
		}
		for _, o := range ki.informer.GetStore().List() {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			src := ki.kind.objectSource(u.GetNamespace(), u.GetName()).File
			next[src] = convertResource(s.resources[src], ki.kind, ki.gvr, u)
		}
	}
	s.resources = next
}
