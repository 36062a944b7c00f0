package xds

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/identity/wellknown"
	"github.com/palisade-mesh/palisade/mesh"
)

// Node metadata keys a proxy sends to identify itself. They are Istio's, so that
// bootstraps written for istiod work unchanged.
const (
	MetaNamespace      = "NAMESPACE"
	MetaLabels         = "LABELS"
	MetaServiceAccount = "SERVICE_ACCOUNT"
	MetaInstanceIPs    = "INSTANCE_IPS"
	MetaGenerator      = "GENERATOR" // "grpc" selects the proxyless generator
)

// GeneratorGRPC is the GENERATOR metadata value of proxyless gRPC clients.
const GeneratorGRPC = "grpc"

// ServerListenerTemplate is the listener name a proxyless gRPC server asks for; %s is
// its listening address (IP:PORT).
const ServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"

// BootstrapOptions describe the proxy a bootstrap is written for.
type BootstrapOptions struct {
	NodeID         string
	XDSAddress     string // host:port of palisaded's xDS server
	Namespace      string
	ServiceAccount string
	Labels         map[string]string
	InstanceIPs    []string

	// SDSSocket is the Unix socket of the agent's SDS server, from which an Envoy
	// sidecar gets its certificates (the bootstrap's sds-grpc cluster); "" means
	// wellknown.Socket. Envoy only.
	SDSSocket string
	// CertDir is the directory where the agent writes a proxyless gRPC
	// application's certificate files (the wellknown file names). When
	// set, the gRPC bootstrap gets the certificate provider instance "default"
	// (grpc's file_watcher plugin) that mutual TLS configuration refers to; without
	// it, a gRPC application rejects configuration that asks for mutual TLS. gRPC
	// only.
	CertDir string
	// CertRefresh is how often gRPC rereads the certificate files; 0 means
	// DefaultCertRefresh.
	CertRefresh time.Duration
}

// SidecarNodeID is the node ID Istio gives a sidecar proxy, which tools written for
// istiod parse: sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local.
func SidecarNodeID(ip, name, namespace string) string {
	return fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", ip, name, namespace, namespace)
}

// DefaultCertRefresh is how often gRPC rereads certificate files by default: the
// agent rotates certificates well before they expire.
const DefaultCertRefresh = 5 * time.Minute

// nodeMetadata is the metadata both bootstrap kinds carry.
func (o BootstrapOptions) nodeMetadata(kind mesh.ProxyKind) map[string]any {
	md := map[string]any{MetaNamespace: o.Namespace}
	if o.ServiceAccount != "" {
		md[MetaServiceAccount] = o.ServiceAccount
	}
	if len(o.Labels) > 0 {
		// map[string]any: structpb (the Envoy bootstrap) takes no other map type.
		labels := make(map[string]any, len(o.Labels))
		for k, v := range o.Labels {
			labels[k] = v
		}
		md[MetaLabels] = labels
	}
	if len(o.InstanceIPs) > 0 {
		md[MetaInstanceIPs] = strings.Join(o.InstanceIPs, ",")
	}
	if kind == mesh.KindProxyless {
		md[MetaGenerator] = GeneratorGRPC
	}
	return md
}

func (o BootstrapOptions) check() error {
	if o.NodeID == "" {
		return fmt.Errorf("bootstrap: a node ID is required")
	}
	if o.XDSAddress == "" {
		return fmt.Errorf("bootstrap: the xDS server address is required")
	}
	if o.Namespace == "" {
		return fmt.Errorf("bootstrap: a namespace is required")
	}
	return nil
}

// GRPCBootstrap returns the JSON bootstrap of a proxyless gRPC application (the file
// GRPC_XDS_BOOTSTRAP names), in the format of gRFC A27 as grpc-go and grpc-js read it.
func GRPCBootstrap(o BootstrapOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	b := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      o.XDSAddress,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []any{"xds_v3"},
		}},
		"node": map[string]any{
			"id":       o.NodeID,
			"metadata": o.nodeMetadata(mesh.KindProxyless),
			"locality": map[string]any{},
		},
		"server_listener_resource_name_template": fmt.Sprintf(ServerListenerTemplate, "%s"),
	}
	if o.CertDir != "" {
		refresh := o.CertRefresh
		if refresh <= 0 {
			refresh = DefaultCertRefresh
		}
		b["certificate_providers"] = map[string]any{
			CertProviderInstance: map[string]any{
				"plugin_name": "file_watcher",
				"config": map[string]any{
					"certificate_file":    filepath.Join(o.CertDir, wellknown.CertChainFile),
					"private_key_file":    filepath.Join(o.CertDir, wellknown.KeyFile),
					"ca_certificate_file": filepath.Join(o.CertDir, wellknown.RootCertFile),
					// A google.protobuf.Duration in JSON, as the plugin reads it.
					"refresh_interval": strconv.FormatFloat(refresh.Seconds(), 'f', -1, 64) + "s",
				},
			},
		}
	}
	return json.MarshalIndent(b, "", "  ")
}

// XDSClusterName is the static cluster an Envoy bootstrap reaches palisaded through.
const XDSClusterName = "xds-grpc"

// EnvoyBootstrap returns the bootstrap of an Envoy sidecar: its node identity, an
// admin endpoint on localhost, ADS (delta when delta is true) from palisaded, and
// the sds-grpc cluster through which the generated TLS configuration gets the
// workload's certificates from the agent (BootstrapOptions.SDSSocket).
func EnvoyBootstrap(o BootstrapOptions, adminPort uint32, delta bool) (*bootstrap.Bootstrap, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(o.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xDS address %q: %w", o.XDSAddress, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xDS address %q: invalid port", o.XDSAddress)
	}
	md, err := structpb.NewStruct(o.nodeMetadata(mesh.KindSidecar))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: node metadata: %w", err)
	}
	apiType := core.ApiConfigSource_GRPC
	if delta {
		apiType = core.ApiConfigSource_DELTA_GRPC
	}
	discovery := cluster.Cluster_STATIC
	if _, err := netip.ParseAddr(host); err != nil {
		discovery = cluster.Cluster_STRICT_DNS
	}
	xdsCluster := &cluster.Cluster{
		Name:                 XDSClusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: discovery},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: XDSClusterName,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(host, uint32(port))}},
			}}}},
		},
		TypedExtensionProtocolOptions: http2ProtocolOptions(),
	}
	sdsSocket := o.SDSSocket
	if sdsSocket == "" {
		sdsSocket = wellknown.Socket
	}
	sdsCluster := &cluster.Cluster{
		Name:                 SDSClusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: SDSClusterName,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
					Address: &core.Address_Pipe{Pipe: &core.Pipe{Path: sdsSocket}},
				}}},
			}}}},
		},
		TypedExtensionProtocolOptions: http2ProtocolOptions(),
	}
	return &bootstrap.Bootstrap{
		Node:            &core.Node{Id: o.NodeID, Cluster: o.Namespace, Metadata: md},
		Admin:           &bootstrap.Admin{Address: socketAddress("127.0.0.1", adminPort)},
		StaticResources: &bootstrap.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{xdsCluster, sdsCluster}},
		DynamicResources: &bootstrap.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName},
				}}},
			},
			CdsConfig: adsConfigSource(),
			LdsConfig: adsConfigSource(),
		},
	}, nil
}

// EnvoyBootstrapYAML is EnvoyBootstrap as the YAML file Envoy reads with -c, checked
// with Validate first.
func EnvoyBootstrapYAML(o BootstrapOptions, adminPort uint32, delta bool) ([]byte, error) {
	b, err := EnvoyBootstrap(o, adminPort, delta)
	if err != nil {
		return nil, err
	}
	if err := Validate(b); err != nil {
		return nil, fmt.Errorf("bootstrap: generated Envoy bootstrap is invalid: %w", err)
	}
	js, err := protojson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return yaml.JSONToYAML(js)
}
