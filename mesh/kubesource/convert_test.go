package kubesource

import (
	"maps"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// Builders of the Kubernetes objects of the tests; every object is in namespace shop.

func svcPort(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP, TargetPort: target}
}

func kubeService(name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("svc-" + name)},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: ports,
		},
	}
}

func endpointSlice(name, service string, ports map[string]int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("slice-" + name), Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
	}
	for _, n := range slices.Sorted(maps.Keys(ports)) {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(ports[n]), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	return s
}

// endpoint is a slice endpoint; ready nil means unknown, pod and node may be "".
func endpoint(address string, ready *bool, pod, node string) discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{Addresses: []string{address}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	if pod != "" {
		ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod}
	}
	if node != "" {
		ep.NodeName = ptr.To(node)
	}
	return ep
}

func kubePod(name, serviceAccount string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("pod-" + name), Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: serviceAccount},
	}
}

func kubeNode(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("node-" + name), Labels: labels}}
}

// lookups serves pods and nodes from fixed objects.
func lookups(pods []*corev1.Pod, nodes []*corev1.Node) workloads {
	return workloads{
		pod: func(ns, name string) *corev1.Pod {
			for _, p := range pods {
				if p.Namespace == ns && p.Name == name {
					return p
				}
			}
			return nil
		},
		node: func(name string) *corev1.Node {
			for _, n := range nodes {
				if n.Name == name {
					return n
				}
			}
			return nil
		},
	}
}

func TestProtocol(t *testing.T) {
	tests := []struct {
		name, appProtocol string
		want              string
	}{
		{"http", "", "HTTP"},
		{"http-web", "", "HTTP"},
		{"HTTP2-x", "", "HTTP2"},
		{"grpc", "", "GRPC"},
		{"grpc-web", "", "GRPC-WEB"},
		{"grpc-web-ui", "", "GRPC-WEB"},
		{"grpc-api", "", "GRPC"},
		{"https-admin", "", "HTTPS"},
		{"tls", "", "TLS"},
		{"tcp-db", "", "TCP"},
		{"mongo", "", "MONGO"},
		{"redis-cache", "", "REDIS"},
		{"mysql", "", "MYSQL"},
		{"web", "", "TCP"},        // no known prefix: Istio would sniff, Palisade does not
		{"", "", "TCP"},           // unnamed
		{"httpx", "", "TCP"},      // a prefix is the part before "-"
		{"udp-dns", "", "TCP"},    // the port is TCP whatever its name
		{"tcp", "http", "HTTP"},   // appProtocol first
		{"http", "grpc", "GRPC"},  // appProtocol first
		{"http", "custom", "TCP"}, // an unknown appProtocol does not fall back to the name
		{"x", "kubernetes.io/h2c", "HTTP2"},
		{"x", "kubernetes.io/ws", "HTTP"},
		{"x", "kubernetes.io/wss", "HTTPS"},
		{"x", "grpc-web", "GRPC-WEB"},
	}
	for _, tt := range tests {
		p := corev1.ServicePort{Name: tt.name}
		if tt.appProtocol != "" {
			p.AppProtocol = ptr.To(tt.appProtocol)
		}
		if got := protocol(p); got != tt.want {
			t.Errorf("protocol(name %q, appProtocol %q) = %s, want %s", tt.name, tt.appProtocol, got, tt.want)
		}
	}
}

func TestServiceEntry(t *testing.T) {
	const host = "reviews.shop.svc.cluster.local"
	regional := kubeNode("n1", map[string]string{regionLabel: "eu", zoneLabel: "eu-1a"})
	detailed := kubeNode("n2", map[string]string{regionLabel: "us", zoneLabel: "us-1b", subzoneLabel: "rack7"})
	regionOnly := kubeNode("n3", map[string]string{regionLabel: "ap"})
	r1 := kubePod("r1", "reviews", map[string]string{"app": "reviews", "version": "v1"})
	r2 := kubePod("r2", "reviews", map[string]string{"app": "reviews", "version": "v2"})
	pinned := kubePod("pinned", "reviews", map[string]string{"app": "reviews", localityLabel: "mars.crater-1.dome"})
	r1.Spec.NodeName = "n3" // the endpoint's own node name wins over it
	pods, nodes := []*corev1.Pod{r1, r2, pinned}, []*corev1.Node{regional, detailed, regionOnly}

	withType := func(svc *corev1.Service, f func(*corev1.Service)) *corev1.Service { f(svc); return svc }
	tests := []struct {
		name     string
		svc      *corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     *networking.ServiceEntry // nil: no ServiceEntry
		wantPods []string
		wantNode []string
	}{
		{
			name: "cluster IP, numeric target ports, ready and not ready endpoints",
			svc:  kubeService("reviews", svcPort("http", 80, intstr.FromInt32(8080)), svcPort("grpc-api", 7070, intstr.FromInt32(7070))),
			slices: []*discoveryv1.EndpointSlice{endpointSlice("reviews-a", "reviews", map[string]int32{"http": 8080, "grpc-api": 7070},
				endpoint("10.0.0.2", ptr.To(true), "r2", "n2"),
				endpoint("10.0.0.1", nil, "r1", "n1"), // ready unknown: ready
				endpoint("10.0.0.9", ptr.To(false), "gone", "n1"),
			)},
			want: &networking.ServiceEntry{
				Hosts: []string{host}, Addresses: []string{"10.96.0.10"},
				Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports: []*networking.ServicePort{
					{Number: 80, Protocol: "HTTP", Name: "http", TargetPort: 8080},
					{Number: 7070, Protocol: "GRPC", Name: "grpc-api"},
				},
				Endpoints: []*networking.WorkloadEntry{
					{Address: "10.0.0.1", Labels: r1.Labels, ServiceAccount: "reviews", Locality: "eu/eu-1a"},
					{Address: "10.0.0.2", Labels: r2.Labels, ServiceAccount: "reviews", Locality: "us/us-1b/rack7"},
				},
			},
			wantPods: []string{"shop/r1", "shop/r2"},
			wantNode: []string{"n1", "n2"},
		},
		{
			name: "named target port resolved per endpoint",
			svc:  kubeService("reviews", svcPort("http", 80, intstr.FromString("web"))),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("reviews-b", "reviews", map[string]int32{"http": 9090}, endpoint("10.0.0.2", nil, "", "")),
				endpointSlice("reviews-a", "reviews", map[string]int32{"http": 8080}, endpoint("10.0.0.1", nil, "", "")),
				endpointSlice("reviews-c", "reviews", map[string]int32{"http": 80}, endpoint("10.0.0.3", nil, "", "")),
			},
			want: &networking.ServiceEntry{
				Hosts: []string{host}, Addresses: []string{"10.96.0.10"},
				Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports: []*networking.ServicePort{{Number: 80, Protocol: "HTTP", Name: "http"}},
				Endpoints: []*networking.WorkloadEntry{
					{Address: "10.0.0.1", Ports: map[string]uint32{"http": 8080}},
					{Address: "10.0.0.2", Ports: map[string]uint32{"http": 9090}},
					{Address: "10.0.0.3"}, // the service port itself: nothing to say
				},
			},
		},
		{
			name: "headless",
			svc: withType(kubeService("reviews", svcPort("tcp-db", 5432, intstr.FromInt32(5432))), func(s *corev1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
			}),
			slices: []*discoveryv1.EndpointSlice{endpointSlice("reviews-a", "reviews", map[string]int32{"tcp-db": 5432}, endpoint("10.0.0.1", nil, "", ""))},
			want: &networking.ServiceEntry{
				Hosts:    []string{host},
				Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports:     []*networking.ServicePort{{Number: 5432, Protocol: "TCP", Name: "tcp-db"}},
				Endpoints: []*networking.WorkloadEntry{{Address: "10.0.0.1"}},
			},
		},
		{
			name: "dual stack, exportTo, pod locality label, node without zone, unknown node",
			svc: withType(kubeService("reviews", svcPort("http", 80, intstr.FromInt32(80))), func(s *corev1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00::10"}
				s.Annotations = map[string]string{exportToAnnotation: " ., billing ,"}
			}),
			slices: []*discoveryv1.EndpointSlice{endpointSlice("reviews-a", "reviews", map[string]int32{"http": 80},
				endpoint("10.0.0.1", nil, "pinned", "n1"),
				endpoint("10.0.0.2", nil, "", "n3"),
				endpoint("10.0.0.3", nil, "", "unknown"),
				endpoint("10.0.0.4", nil, "r1", ""), // the pod's node
			)},
			want: &networking.ServiceEntry{
				Hosts: []string{host}, Addresses: []string{"10.96.0.10", "fd00::10"}, ExportTo: []string{".", "billing"},
				Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports: []*networking.ServicePort{{Number: 80, Protocol: "HTTP", Name: "http"}},
				Endpoints: []*networking.WorkloadEntry{
					{Address: "10.0.0.1", Labels: pinned.Labels, ServiceAccount: "reviews", Locality: "mars/crater-1/dome"},
					{Address: "10.0.0.2", Locality: "ap"},
					{Address: "10.0.0.3"},
					{Address: "10.0.0.4", Labels: r1.Labels, ServiceAccount: "reviews", Locality: "ap"},
				},
			},
			wantPods: []string{"shop/pinned", "shop/r1"},
			wantNode: []string{"n3", "n3", "unknown"},
		},
		{
			name: "address in two slices taken once, FQDN slice left out",
			svc:  kubeService("reviews", svcPort("http", 80, intstr.FromInt32(80))),
			slices: []*discoveryv1.EndpointSlice{
				endpointSlice("reviews-b", "reviews", map[string]int32{"http": 80}, endpoint("10.0.0.1", nil, "r2", "")),
				endpointSlice("reviews-a", "reviews", map[string]int32{"http": 80}, endpoint("10.0.0.1", nil, "r1", "n1")),
				func() *discoveryv1.EndpointSlice {
					s := endpointSlice("reviews-c", "reviews", map[string]int32{"http": 80}, endpoint("db.example.com", nil, "", ""))
					s.AddressType = discoveryv1.AddressTypeFQDN
					return s
				}(),
			},
			want: &networking.ServiceEntry{
				Hosts: []string{host}, Addresses: []string{"10.96.0.10"},
				Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports:     []*networking.ServicePort{{Number: 80, Protocol: "HTTP", Name: "http"}},
				Endpoints: []*networking.WorkloadEntry{{Address: "10.0.0.1", Labels: r1.Labels, ServiceAccount: "reviews", Locality: "eu/eu-1a"}},
			},
			wantPods: []string{"shop/r1"},
			wantNode: []string{"n1"},
		},
		{
			name: "UDP and SCTP ports left out, unnamed port named after its protocol",
			svc: kubeService("reviews",
				corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP},
				corev1.ServicePort{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP},
				corev1.ServicePort{Port: 8080, AppProtocol: ptr.To("http")}, // protocol unset: TCP
			),
			want: &networking.ServiceEntry{
				Hosts: []string{host}, Addresses: []string{"10.96.0.10"},
				Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports: []*networking.ServicePort{{Number: 8080, Protocol: "HTTP", Name: "http-8080"}},
			},
		},
		{
			name: "no TCP port",
			svc:  kubeService("reviews", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}),
		},
		{
			name: "ExternalName",
			svc: withType(kubeService("reviews", svcPort("https", 443, intstr.FromInt32(443))), func(s *corev1.Service) {
				s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "reviews.example.com."
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
			}),
			slices: []*discoveryv1.EndpointSlice{endpointSlice("reviews-a", "reviews", map[string]int32{"https": 443}, endpoint("10.0.0.1", nil, "r1", ""))},
			want: &networking.ServiceEntry{
				Hosts:    []string{host},
				Location: networking.ServiceEntry_MESH_EXTERNAL, Resolution: networking.ServiceEntry_DNS,
				Ports:     []*networking.ServicePort{{Number: 443, Protocol: "HTTPS", Name: "https"}},
				Endpoints: []*networking.WorkloadEntry{{Address: "reviews.example.com"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, refs := serviceEntry(tt.svc, tt.slices, lookups(pods, nodes))
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("ServiceEntry (-want +got):\n%s", diff)
			}
			if got != nil {
				obj := config.Object{Key: config.Key{Kind: config.KindServiceEntry, Namespace: "shop", Name: tt.svc.Name}, Spec: got}
				if err := config.Validate(obj); err != nil {
					t.Errorf("the ServiceEntry is invalid: %v", err)
				}
			}
			var gotPods []string
			for _, p := range refs.pods {
				gotPods = append(gotPods, p.String())
			}
			slices.Sort(gotPods)
			slices.Sort(refs.nodes)
			if !slices.Equal(gotPods, tt.wantPods) || !slices.Equal(refs.nodes, tt.wantNode) {
				t.Errorf("references: pods %v, nodes %v; want pods %v, nodes %v", gotPods, refs.nodes, tt.wantPods, tt.wantNode)
			}
		})
	}
}
