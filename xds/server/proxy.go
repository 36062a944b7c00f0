package server

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/xds"
)

// ErrBadNode is returned for a node that does not identify itself well enough.
var ErrBadNode = errors.New("invalid node")

// ProxyFromNode reads a proxy's identity from its xDS node: the ID and the Istio
// metadata keys (NAMESPACE, LABELS, SERVICE_ACCOUNT, INSTANCE_IPS, GENERATOR). When
// NAMESPACE is missing, the namespace is taken from an Istio-style node ID
// (type~ip~pod.namespace~namespace.svc.cluster.local).
func ProxyFromNode(node *core.Node) (*mesh.Proxy, error) {
	if node.GetId() == "" {
		return nil, fmt.Errorf("%w: the node ID is empty", ErrBadNode)
	}
	md := node.GetMetadata().GetFields()
	p := &mesh.Proxy{
		ID:             node.GetId(),
		Kind:           mesh.KindSidecar,
		Namespace:      md[xds.MetaNamespace].GetStringValue(),
		ServiceAccount: md[xds.MetaServiceAccount].GetStringValue(),
		Labels:         stringMap(md[xds.MetaLabels].GetStructValue()),
	}
	if md[xds.MetaGenerator].GetStringValue() == xds.GeneratorGRPC {
		p.Kind = mesh.KindProxyless
	}
	if ips := md[xds.MetaInstanceIPs].GetStringValue(); ips != "" {
		p.IPs = strings.Split(ips, ",")
	}
	if p.Namespace == "" {
		parts := strings.Split(p.ID, "~")
		if len(parts) == 4 {
			p.Namespace, _, _ = strings.Cut(parts[3], ".")
		}
	}
	if p.Namespace == "" {
		return nil, fmt.Errorf("%w %q: node metadata %s is required", ErrBadNode, p.ID, xds.MetaNamespace)
	}
	return p, nil
}

func stringMap(s *structpb.Struct) map[string]string {
	if s == nil {
		return nil
	}
	out := make(map[string]string, len(s.Fields))
	for k, v := range s.Fields {
		out[k] = v.GetStringValue()
	}
	return out
}

// viewKey is everything the generator reads about a proxy: proxies with the same key
// share one translation. Besides the namespace and kind, that is what its inbound
// configuration depends on (xds.Target): the workload-level PeerAuthentication
// selecting it, by key (an edited policy keeps its proxies' translation, and its
// memo), for proxyless gRPC whether it is labelled tlsMode=istio, and for a sidecar
// that the policy engine guards (a CUSTOM AuthorizationPolicy or a RegoPolicy selects
// it, and it serves HTTP ports) its labels and those ports (xds.ExtAuthz). Proxies of
// a namespace with the same effective policy and no ext_authz therefore share one
// translation, as they always did; a guarded workload's proxies share theirs; and a
// policy change re-translates the inbound configuration of the views it selects.
type viewKey struct {
	namespace string
	kind      mesh.ProxyKind
	policy    config.Key // zero: no workload-level policy
	istioTLS  bool
	extAuthz  xds.ExtAuthz // zero: the policy engine does not guard the proxy
}

// keyOf returns the view of a proxy in a snapshot.
func keyOf(snap *mesh.Snapshot, p *mesh.Proxy) viewKey {
	t := xds.TargetFor(snap, p)
	k := viewKey{namespace: p.Namespace, kind: t.Kind, istioTLS: t.IstioTLSMode, extAuthz: t.ExtAuthz}
	if w := t.Policies.Workload; w != nil {
		k.policy = w.Key
	}
	return k
}

// target is the translation target of the key's proxies in a snapshot.
func (k viewKey) target(snap *mesh.Snapshot) xds.Target {
	t := xds.Target{Kind: k.kind, Policies: snap.PeerAuthentications.ForNamespace(k.namespace), IstioTLSMode: k.istioTLS, ExtAuthz: k.extAuthz}
	if k.namespace != mesh.RootNamespace {
		t.Policies.Workload = snap.PeerAuthentications.ByKey(k.policy)
	}
	return t
}

// variant tells apart the views of one namespace and kind, as a string recorded in
// delta streams' state.
func (k viewKey) variant() string {
	if k.policy == (config.Key{}) && !k.istioTLS && k.extAuthz == (xds.ExtAuthz{}) {
		return ""
	}
	v := k.policy.Namespace + "/" + k.policy.Name + "/" + strconv.FormatBool(k.istioTLS)
	if k.extAuthz != (xds.ExtAuthz{}) {
		v += "/" + k.extAuthz.Ports + "/" + k.extAuthz.Labels
	}
	return v
}
