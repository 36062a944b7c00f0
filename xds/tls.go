package xds

import (
	"slices"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/identity/wellknown"
	"github.com/palisade-mesh/palisade/mesh"
)

// Names shared with the agent (palisade-agent) and the bootstraps.
const (
	// SDSClusterName is the Envoy bootstrap's static cluster reaching the agent's SDS
	// server over its Unix socket (Istio's name).
	SDSClusterName = "sds-grpc"
	// CertProviderInstance is the certificate provider instance of a proxyless gRPC
	// bootstrap that holds both (gRFC A29).
	CertProviderInstance = "default"
)

const (
	tlsTransportSocketName       = "envoy.transport_sockets.tls"
	rawBufferTransportSocketName = "envoy.transport_sockets.raw_buffer"
	transportSocketMatchKey      = "envoy.transport_socket_match"
	tlsModeKey                   = "tlsMode"
)

// sdsConfigSource fetches secrets from the agent over the sds-grpc cluster.
var sdsConfigSource = &core.ConfigSource{
	ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
		ApiType:                   core.ApiConfigSource_GRPC,
		TransportApiVersion:       core.ApiVersion_V3,
		SetNodeOnFirstMessageOnly: true,
		GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: SDSClusterName},
		}}},
	}},
	// Wait for the certificate however long the agent takes, rather than start
	// without it.
	InitialFetchTimeout: durationpb.New(0),
	ResourceApiVersion:  core.ApiVersion_V3,
}

func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: sdsConfigSource}
}

// ALPN values of in-mesh mutual TLS, as Istio's sidecars offer them (without the
// metadata exchange protocol, which Palisade does not use).
var (
	alpnInMesh   = []string{"istio"}
	alpnInMeshH2 = []string{"istio", "h2"}
	alpnInbound  = []string{"h2", "http/1.1"}
)

// spiffePrefix is the start of every identity of the trust domain.
func (g *generator) spiffePrefix() string { return "spiffe://" + g.opts.trustDomain() + "/" }

// sanMatchers checks a peer's identity against sans, or, when sans is empty,
// against the trust domain: URI SANs for SPIFFE IDs, DNS SANs for other names.
func (g *generator) sanMatchers(sans []string) []*tlsv3.SubjectAltNameMatcher {
	if len(sans) == 0 {
		return []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: g.spiffePrefix()}},
		}}
	}
	out := make([]*tlsv3.SubjectAltNameMatcher, len(sans))
	for i, san := range sans {
		typ := tlsv3.SubjectAltNameMatcher_DNS
		if strings.HasPrefix(san, "spiffe://") {
			typ = tlsv3.SubjectAltNameMatcher_URI
		}
		out[i] = &tlsv3.SubjectAltNameMatcher{SanType: typ, Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: san}}}
	}
	return out
}

// grpcSANMatchers is sanMatchers for gRPC, which reads the untyped
// match_subject_alt_names (matched against every SAN of the peer).
func (g *generator) grpcSANMatchers(sans []string) []*matcher.StringMatcher {
	if len(sans) == 0 {
		return []*matcher.StringMatcher{{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: g.spiffePrefix()}}}
	}
	out := make([]*matcher.StringMatcher, len(sans))
	for i, san := range sans {
		out[i] = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: san}}
	}
	return out
}

// sidecarCommonTLS is the TLS context of a sidecar's mesh connections: the
// workload certificate and the trust bundle from the agent over SDS, the peer
// checked against sans.
func (g *generator) sidecarCommonTLS(alpn []string, sans []*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		AlpnProtocols:                  alpn,
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(wellknown.SecretCertificate)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
				ValidationContextSdsSecretConfig: sdsSecret(wellknown.SecretRootCA),
			},
		},
	}
}

// grpcCommonTLS is the TLS context of a proxyless gRPC application (gRFC A29): the
// certificate and the roots from the bootstrap's certificate provider instance (gRPC
// has no SDS), and, for a client, the server checked against sans. gRPC reads the
// root provider from validation_context (or combined_validation_context's
// default_validation_context; a combined context would need an SDS config to pass
// validation, which gRPC would ignore). It rejects tls_params, and SAN matchers on
// the server side.
func (g *generator) grpcCommonTLS(client bool, sans []string) *tlsv3.CommonTlsContext {
	vc := &tlsv3.CertificateValidationContext{
		CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: wellknown.SecretRootCA},
	}
	if client {
		//lint:ignore SA1019 deprecated in Envoy, but the SAN field gRPC reads (not the typed one)
		vc.MatchSubjectAltNames = g.grpcSANMatchers(sans)
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: wellknown.SecretCertificate},
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}
}

func tlsTransportSocket(ctx *tlsv3.UpstreamTlsContext) *core.TransportSocket {
	return &core.TransportSocket{Name: tlsTransportSocketName, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
}

func downstreamTransportSocket(ctx *tlsv3.DownstreamTlsContext) *core.TransportSocket {
	return &core.TransportSocket{Name: tlsTransportSocketName, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
}

var rawBufferTransportSocket = &core.TransportSocket{
	Name:       rawBufferTransportSocketName,
	ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbuffer.RawBuffer{})},
}

// The transport socket matches of an auto mTLS cluster (Istio's): mutual TLS to
// endpoints whose metadata says tlsMode istio, plaintext to the others.
var (
	istioTLSModeMatch    = &structpb.Struct{Fields: map[string]*structpb.Value{tlsModeKey: structpb.NewStringValue(mesh.TLSModeIstio)}}
	istioTLSEndpointMD   = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{transportSocketMatchKey: istioTLSModeMatch}}
	plaintextSocketMatch = &cluster.Cluster_TransportSocketMatch{Name: "tlsMode-disabled", Match: &structpb.Struct{}, TransportSocket: rawBufferTransportSocket}
)

// upstreamMode is how a cluster connects to its endpoints.
type upstreamMode uint8

const (
	upstreamPlaintext upstreamMode = iota
	upstreamMutual                 // always mutual TLS (ISTIO_MUTUAL)
	upstreamAuto                   // mutual TLS to endpoints in the mesh, plaintext to the others
)

// clientTLS returns the TLS settings of a DestinationRule for a port of a subset
// (nil: the rule's own), merged as Istio does: the rule's policy, overridden by its
// settings for the port, then by the subset's policy and its settings for the port.
func clientTLS(dr *mesh.DestinationRule, subset *networking.Subset, port uint32) *networking.ClientTLSSettings {
	var tls *networking.ClientTLSSettings
	apply := func(tp *networking.TrafficPolicy) {
		if tp.GetTls() != nil {
			tls = tp.GetTls()
		}
		for _, pl := range tp.GetPortLevelSettings() {
			if pl.GetPort().GetNumber() == port && pl.GetTls() != nil {
				tls = pl.GetTls()
			}
		}
	}
	if dr != nil {
		apply(dr.Spec.GetTrafficPolicy())
	}
	apply(subset.GetTrafficPolicy())
	return tls
}

// upstreamMode decides, as Istio's auto mTLS does: ISTIO_MUTUAL always uses mutual
// TLS and DISABLE never does; otherwise (SIMPLE and MUTUAL, which need the user's
// certificates, are reported and ignored) a service inside the mesh whose namespace
// does not DISABLE mTLS gets auto mTLS, any other plaintext.
func (g *generator) upstreamMode(svc *mesh.Service, tls *networking.ClientTLSSettings) upstreamMode {
	if tls != nil { // DISABLE is the zero mode: "tls: {}" disables TLS, as in Istio
		switch tls.Mode {
		case networking.ClientTLSSettings_ISTIO_MUTUAL:
			return upstreamMutual
		case networking.ClientTLSSettings_DISABLE:
			return upstreamPlaintext
		}
	}
	if svc.MeshExternal {
		return upstreamPlaintext
	}
	// Istio's best effort: workload and port-level policies are not known for a
	// service as a whole, but they decide per endpoint (see endpointUsesMTLS).
	if g.view.PeerAuthentications.ForNamespace(svc.Namespace).Effective().Mode == mesh.MTLSDisable {
		return upstreamPlaintext
	}
	return upstreamAuto
}

// endpointUsesMTLS reports whether an auto mTLS client uses mutual TLS to an
// endpoint serving port: it says it takes part in mesh mTLS and its workload's
// policy does not DISABLE mTLS on the port it listens on.
func (g *generator) endpointUsesMTLS(ep *mesh.Endpoint, port mesh.Port) bool {
	if ep.Labels[mesh.TLSModeLabel] != mesh.TLSModeIstio {
		return false
	}
	m := g.view.PeerAuthentications.ForWorkload(ep.Namespace, ep.Labels).Effective()
	return m.ModeFor(ep.PortFor(port)) != mesh.MTLSDisable
}

// destinationPolicies is the fingerprint of a service's clusters and endpoints: its
// DestinationRule and the PeerAuthentications that decide how its endpoints accept
// connections.
func (g *generator) destinationPolicies(svc *mesh.Service, dr *mesh.DestinationRule) []any {
	pas := g.view.PeerAuthentications
	ns := pas.ForNamespace(svc.Namespace)
	out := []any{dr, ns.Mesh, ns.Namespace}
	for _, ep := range svc.Endpoints {
		if ep.Namespace != svc.Namespace { // not so in today's model, but cheap to cover
			out = append(out, pas.ForNamespace(ep.Namespace).Namespace)
		}
		if pas.HasWorkloadPolicies(ep.Namespace) {
			out = append(out, pas.ForWorkload(ep.Namespace, ep.Labels).Workload)
		}
	}
	return out
}

// serviceIdentities are the identities a service's endpoints may present: the
// SPIFFE IDs of their service accounts and the ServiceEntry's subjectAltNames.
func (g *generator) serviceIdentities(svc *mesh.Service) []string {
	ids := slices.Clone(svc.SubjectAltNames)
	for _, ep := range svc.Endpoints {
		if ep.ServiceAccount != "" {
			ids = append(ids, g.spiffePrefix()+"ns/"+ep.Namespace+"/sa/"+ep.ServiceAccount)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// istioSNI is the SNI of in-mesh mutual TLS to a cluster, as Istio sets it.
func istioSNI(port uint32, subset, host string) string {
	return "outbound_." + strconv.FormatUint(uint64(port), 10) + "_." + subset + "_." + host
}

// applyUpstreamTLS sets how cluster c of a service port connects, for the subset
// of the given name and labels ("" and nil for the service's default cluster).
func (g *generator) applyUpstreamTLS(c *cluster.Cluster, svc *mesh.Service, port mesh.Port, subset string, subsetLabels map[string]string, tls *networking.ClientTLSSettings) {
	mode := g.upstreamMode(svc, tls)
	sans := tls.GetSubjectAltNames()
	if len(sans) == 0 {
		sans = g.serviceIdentities(svc)
	}
	if g.target.Kind == mesh.KindProxyless {
		// gRPC has no transport socket matches: one setting for the whole cluster,
		// mutual TLS only if every endpoint takes it.
		if mode == upstreamAuto {
			mode = upstreamPlaintext
			eps := clusterEndpoints(svc.Endpoints, subsetLabels)
			if len(eps) > 0 && !slices.ContainsFunc(eps, func(ep *mesh.Endpoint) bool { return !g.endpointUsesMTLS(ep, port) }) {
				mode = upstreamMutual
			}
		}
		if mode == upstreamMutual {
			c.TransportSocket = tlsTransportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: g.grpcCommonTLS(true, sans)})
		}
		return
	}
	if mode == upstreamPlaintext {
		return
	}
	alpn := alpnInMesh
	if port.Protocol == "GRPC" || port.Protocol == "HTTP2" {
		alpn = alpnInMeshH2
	}
	sni := tls.GetSni()
	if sni == "" {
		sni = istioSNI(port.Number, subset, svc.Hostname)
	}
	socket := tlsTransportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: g.sidecarCommonTLS(alpn, g.sanMatchers(sans)), Sni: sni})
	if mode == upstreamMutual {
		c.TransportSocket = socket
		return
	}
	c.TransportSocketMatches = []*cluster.Cluster_TransportSocketMatch{
		{Name: "tlsMode-istio", Match: istioTLSModeMatch, TransportSocket: socket},
		plaintextSocketMatch,
	}
}

// inboundTLS terminates mutual TLS on a sidecar's inbound side: any identity of the
// trust domain is accepted (authorization policies restrict further).
func (g *generator) inboundTLS() *core.TransportSocket {
	return downstreamTransportSocket(&tlsv3.DownstreamTlsContext{
		CommonTlsContext:         g.sidecarCommonTLS(alpnInbound, g.sanMatchers(nil)),
		RequireClientCertificate: wrapperspb.Bool(true),
	})
}

// grpcServerTLS is a proxyless gRPC server's mutual TLS: gRPC checks the client's
// chain against the roots but cannot match SANs on the server side.
func (g *generator) grpcServerTLS() *core.TransportSocket {
	return downstreamTransportSocket(&tlsv3.DownstreamTlsContext{
		CommonTlsContext:         g.grpcCommonTLS(false, nil),
		RequireClientCertificate: wrapperspb.Bool(true),
	})
}
