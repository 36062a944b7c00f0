package kubesource

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/palisade-mesh/palisade/mesh"
)

// Names Istio gives meaning to on Services, Pods and Nodes.
const (
	// exportToAnnotation on a Service lists the namespaces that see it, as a
	// ServiceEntry's exportTo does (comma-separated).
	exportToAnnotation = "networking.istio.io/exportTo"
	// localityLabel on a Pod overrides the locality of its node; "/" cannot be in a
	// label value, so region.zone.subzone is accepted too.
	localityLabel = "istio-locality"
	regionLabel   = corev1.LabelTopologyRegion
	zoneLabel     = corev1.LabelTopologyZone
	subzoneLabel  = "topology.istio.io/subzone"
)

// workloads looks up the objects endpoints refer to; a nil result means unknown.
type workloads struct {
	pod  func(namespace, name string) *corev1.Pod
	node func(name string) *corev1.Node
}

// references are the pods and nodes a conversion looked up, found or not, so that a
// change to one of them converts the Service again.
type references struct {
	pods  []types.NamespacedName
	nodes []string
}

// serviceEntry returns the ServiceEntry that stands for a Kubernetes Service, so
// that mesh.Build treats the Service like a ServiceEntry: its host is
// NAME.NAMESPACE.svc.cluster.local, its addresses the cluster IPs (none when
// headless), its endpoints the ready ones of its EndpointSlices, with the labels and
// service account of their pods and the locality of their nodes. An ExternalName
// Service becomes a MESH_EXTERNAL entry resolved by DNS. It returns nil for a
// Service without a TCP port: the mesh proxies TCP only, and a ServiceEntry needs a
// port.
func serviceEntry(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, w workloads) (*networking.ServiceEntry, references) {
	se := &networking.ServiceEntry{
		Hosts:      []string{svc.Name + "." + svc.Namespace + "." + mesh.DomainSuffix},
		Location:   networking.ServiceEntry_MESH_INTERNAL,
		Resolution: networking.ServiceEntry_STATIC,
		ExportTo:   exportTo(svc.Annotations[exportToAnnotation]),
	}
	var tcpPorts []corev1.ServicePort
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		tcpPorts = append(tcpPorts, p)
		proto := protocol(p)
		se.Ports = append(se.Ports, &networking.ServicePort{
			Number:     uint32(p.Port),
			Protocol:   proto,
			Name:       cmp.Or(p.Name, fmt.Sprintf("%s-%d", strings.ToLower(proto), p.Port)),
			TargetPort: targetPort(p),
		})
	}
	if len(se.Ports) == 0 {
		return nil, references{}
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		se.Location = networking.ServiceEntry_MESH_EXTERNAL
		se.Resolution = networking.ServiceEntry_DNS
		se.Endpoints = []*networking.WorkloadEntry{{Address: strings.TrimSuffix(svc.Spec.ExternalName, ".")}}
		return se, references{}
	}
	ips := svc.Spec.ClusterIPs // dual-stack; ClusterIP is its first
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			se.Addresses = append(se.Addresses, ip)
		}
	}
	var refs references
	se.Endpoints, refs = endpoints(tcpPorts, se.Ports, endpointSlices, w)
	return se, refs
}

// endpoints converts the ready endpoints of a Service's EndpointSlices. svcPorts
// and sePorts are the Service's TCP ports and the ServiceEntry ports made of them.
// An endpoint's ports name the port it serves a service port on (the slice resolved
// named target ports per pod) where that differs from the ServiceEntry's default.
func endpoints(svcPorts []corev1.ServicePort, sePorts []*networking.ServicePort, endpointSlices []*discoveryv1.EndpointSlice, w workloads) ([]*networking.WorkloadEntry, references) {
	// In name order, so that an address in two slices (as while a slice is split)
	// is always taken from the same one.
	endpointSlices = slices.SortedFunc(slices.Values(endpointSlices), func(a, b *discoveryv1.EndpointSlice) int {
		return strings.Compare(a.Name, b.Name)
	})
	var out []*networking.WorkloadEntry
	var refs references
	seen := map[string]bool{}
	for _, slice := range endpointSlices {
		if slice.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		numbers := make(map[string]int32, len(slice.Ports))
		for _, p := range slice.Ports {
			if p.Port != nil {
				numbers[ptr.Deref(p.Name, "")] = *p.Port
			}
		}
		for _, ep := range slice.Endpoints {
			// Consumers use the first address only (see the EndpointSlice API).
			if !ptr.Deref(ep.Conditions.Ready, true) || len(ep.Addresses) == 0 || seen[ep.Addresses[0]] {
				continue
			}
			seen[ep.Addresses[0]] = true
			we := &networking.WorkloadEntry{Address: ep.Addresses[0]}
			for i, p := range svcPorts {
				if n, ok := numbers[p.Name]; ok && uint32(n) != cmp.Or(sePorts[i].TargetPort, sePorts[i].Number) {
					if we.Ports == nil {
						we.Ports = map[string]uint32{}
					}
					we.Ports[sePorts[i].Name] = uint32(n)
				}
			}
			nodeName := ptr.Deref(ep.NodeName, "")
			var pod *corev1.Pod
			if r := ep.TargetRef; r != nil && r.Kind == "Pod" {
				key := types.NamespacedName{Namespace: cmp.Or(r.Namespace, slice.Namespace), Name: r.Name}
				refs.pods = append(refs.pods, key)
				if pod = w.pod(key.Namespace, key.Name); pod != nil {
					we.Labels = pod.Labels
					we.ServiceAccount = pod.Spec.ServiceAccountName
					nodeName = cmp.Or(nodeName, pod.Spec.NodeName)
				}
			}
			if l := podLocality(pod); l != "" {
				we.Locality = l
			} else if nodeName != "" {
				refs.nodes = append(refs.nodes, nodeName)
				we.Locality = nodeLocality(w.node(nodeName))
			}
			out = append(out, we)
		}
	}
	slices.SortFunc(out, func(a, b *networking.WorkloadEntry) int { return strings.Compare(a.Address, b.Address) })
	return out, refs
}

// protocol selects a Service port's protocol as Istio does ("Protocol Selection"):
// the appProtocol if set, else the port name's prefix before "-" (grpc-web as a
// whole). A name Istio would sniff the protocol for is TCP here: Palisade does not
// sniff.
func protocol(p corev1.ServicePort) string {
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return "HTTP2"
		case "kubernetes.io/ws":
			return "HTTP"
		case "kubernetes.io/wss":
			return "HTTPS"
		}
	}
	if len(name) >= len("grpc-web") && strings.EqualFold(name[:len("grpc-web")], "grpc-web") {
		return "GRPC-WEB"
	}
	prefix, _, _ := strings.Cut(name, "-")
	switch p := strings.ToUpper(prefix); p {
	case "HTTP", "HTTP2", "HTTPS", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL":
		return p
	}
	return "TCP"
}

// targetPort returns a numeric target port that differs from the port, else 0 (the
// port itself, or a named port that each endpoint resolves).
func targetPort(p corev1.ServicePort) uint32 {
	if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0 && p.TargetPort.IntVal != p.Port {
		return uint32(p.TargetPort.IntVal)
	}
	return 0
}

// exportTo reads the value of the exportTo annotation.
func exportTo(annotation string) []string {
	var out []string
	for v := range strings.SplitSeq(annotation, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// podLocality returns the locality a pod's istio-locality label sets, or "".
func podLocality(pod *corev1.Pod) string {
	if pod == nil {
		return ""
	}
	l := pod.Labels[localityLabel]
	if strings.Contains(l, "/") {
		return l
	}
	return strings.ReplaceAll(l, ".", "/")
}

// nodeLocality returns region/zone/subzone from a node's topology labels, without
// trailing empty parts (as a WorkloadEntry's locality is written), or "".
func nodeLocality(node *corev1.Node) string {
	if node == nil {
		return ""
	}
	return strings.TrimRight(node.Labels[regionLabel]+"/"+node.Labels[zoneLabel]+"/"+node.Labels[subzoneLabel], "/")
}
