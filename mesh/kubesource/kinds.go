package kubesource

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// crdKind is one of the custom resource kinds Palisade reads.
type crdKind struct {
	kind     config.Kind
	group    string
	resource string // plural: the CRD's name is resource.group
}

// crdKinds are the kinds of mesh/config, by the CRDs that define them.
var crdKinds = []crdKind{
	{config.KindServiceEntry, config.NetworkingGroup, "serviceentries"},
	{config.KindWorkloadEntry, config.NetworkingGroup, "workloadentries"},
	{config.KindVirtualService, config.NetworkingGroup, "virtualservices"},
	{config.KindDestinationRule, config.NetworkingGroup, "destinationrules"},
	{config.KindPeerAuthentication, config.SecurityGroup, "peerauthentications"},
	{config.KindAuthorizationPolicy, config.SecurityGroup, "authorizationpolicies"},
	{config.KindRequestAuthentication, config.SecurityGroup, "requestauthentications"},
	{config.KindRegoPolicy, config.PolicyGroup, "regopolicies"},
}

// crdName is the name of the CustomResourceDefinition of the kind.
func (k crdKind) crdName() string { return k.resource + "." + k.group }

func (k crdKind) gvr(version string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: k.group, Version: version, Resource: k.resource}
}

// sourcePrefix starts every config.Source.File of this source, so that diagnostics
// say where an object came from the way the file source names files.
const sourcePrefix = "kubernetes:"

// objectSource names a custom resource in diagnostics:
// kubernetes:virtualservices.networking.istio.io/NAMESPACE/NAME.
func (k crdKind) objectSource(namespace, name string) config.Source {
	return config.Source{File: sourcePrefix + k.crdName() + "/" + namespace + "/" + name}
}

// serviceSource names the ServiceEntry that stands for a Kubernetes Service.
func serviceSource(namespace, name string) config.Source {
	return config.Source{File: sourcePrefix + "services/" + namespace + "/" + name}
}

// kindInformer reads the objects of one custom resource kind.
type kindInformer struct {
	kind     crdKind
	gvr      schema.GroupVersionResource
	informer cache.SharedIndexInformer
	stop     context.CancelFunc
}

// reconcileKinds starts reading the kinds whose CRD is established and stops
// reading those whose CRD is gone; a kind whose served version changed is read
// again at the new one.
func (s *Source) reconcileKinds(ctx context.Context) {
	for _, k := range crdKinds {
		version := ""
		if crd, err := s.listers.crds.Get(k.crdName()); err == nil {
			version = servedVersion(crd)
		}
		cur := s.kinds[k.kind]
		if cur != nil && cur.gvr.Version == version {
			continue
		}
		if cur != nil {
			cur.stop()
			delete(s.kinds, k.kind)
			s.metrics.watched.WithLabelValues(string(k.kind)).Set(0)
			s.log.Info("stopped reading a custom resource kind", "kind", k.kind, "resource", cur.gvr.String())
		}
		if version == "" {
			continue
		}
		ki, err := s.watchKind(ctx, k, version)
		if err != nil {
			s.log.Error("cannot read a custom resource kind", "kind", k.kind, "error", err)
			continue
		}
		s.kinds[k.kind] = ki
		s.metrics.watched.WithLabelValues(string(k.kind)).Set(1)
		s.log.Info("reading a custom resource kind", "kind", k.kind, "resource", ki.gvr.String())
	}
}

// watchKind starts an informer for the objects of kind k at version. Its objects
// are served once it has synced, never a partial list: a missing DENY policy is
// worse than a late ALLOW one.
func (s *Source) watchKind(ctx context.Context, k crdKind, version string) (*kindInformer, error) {
	gvr := k.gvr(version)
	informer := dynamicinformer.NewFilteredDynamicInformer(s.dynamic, gvr, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
	if err := informer.SetTransform(strip); err != nil {
		return nil, err
	}
	if _, err := informer.AddEventHandler(s.handler(gvr.Resource, nil, recordResource)); err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(ctx)
	s.kindWG.Go(func() { informer.RunWithContext(ctx) })
	s.kindWG.Go(func() {
		if cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
			s.markResourcesChanged()
		}
	})
	return &kindInformer{kind: k, gvr: gvr, informer: informer, stop: stop}, nil
}
