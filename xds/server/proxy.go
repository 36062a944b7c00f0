package server

import (
	"errors"
	"fmt"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/palisade-mesh/palisade/mesh"
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
// share one translation.
type viewKey struct {
	namespace string
	kind      mesh.ProxyKind
}

func keyOf(p *mesh.Proxy) viewKey { return viewKey{namespace: p.Namespace, kind: p.Kind} }
