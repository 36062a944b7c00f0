package agent

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/palisade-mesh/palisade/identity/wellknown"
	"github.com/palisade-mesh/palisade/test/syncbuf"
)

var testNode = &core.Node{Id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local", Cluster: "a.default"}

// validateDeep runs ValidateAll on m and on everything inside its Any fields,
// which ValidateAll itself does not enter.
func validateDeep(m proto.Message) error {
	var errs []error
	var walk func(protoreflect.Message)
	walk = func(r protoreflect.Message) {
		if a, ok := r.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if v, ok := inner.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					errs = append(errs, err)
				}
			}
			walk(inner.ProtoReflect())
			return
		}
		r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.Kind() != protoreflect.MessageKind:
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap():
			default:
				walk(v.Message())
			}
			return true
		})
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, err)
		}
	}
	walk(m.ProtoReflect())
	return errors.Join(errs...)
}

// secretsOf unpacks and validates the secrets of a response.
func secretsOf(t *testing.T, anys []*anypb.Any) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, a := range anys {
		if a.GetTypeUrl() != resource.SecretType {
			t.Fatalf("type %s", a.GetTypeUrl())
		}
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		if err := validateDeep(s); err != nil {
			t.Fatalf("secret %q fails validation: %v", s.GetName(), err)
		}
		out[s.GetName()] = s
	}
	return out
}

// checkDefault asserts the "default" secret is svid's chain and matching key.
func checkDefault(t *testing.T, s *tlsv3.Secret, svid *x509svid.SVID) {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("default secret has no tls_certificate: %v", s)
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("cert and key do not match: %v", err)
	}
	if len(pair.Certificate) != len(svid.Certificates) {
		t.Fatalf("chain length %d", len(pair.Certificate))
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if !sameCert(leaf, svid.Certificates[0]) {
		t.Fatalf("default is serial %s, want %s", leaf.SerialNumber, svid.Certificates[0].SerialNumber)
	}
	if blk, _ := pem.Decode(tc.GetPrivateKey().GetInlineBytes()); blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatal("key is not PKCS#8 PEM")
	}
}

func pemCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func TestSDSStreamSecrets(t *testing.T) {
	var logs syncbuf.Buffer
	h := startHarness(t, withLogger(&logs))
	ctx := testCtx(t)
	client := secretservice.NewSecretDiscoveryServiceClient(rawConn(t, h.path))
	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Envoy opens one subscription per secret; both on one stream works too.
	req := &discovery.DiscoveryRequest{Node: testNode, TypeUrl: resource.SecretType, ResourceNames: []string{wellknown.SecretCertificate, wellknown.SecretRootCA}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	secrets := secretsOf(t, resp.GetResources())
	if len(secrets) != 2 {
		t.Fatalf("got %d secrets", len(secrets))
	}
	checkDefault(t, secrets[wellknown.SecretCertificate], h.svidA)
	roots := pemCerts(t, secrets[wellknown.SecretRootCA].GetValidationContext().GetTrustedCa().GetInlineBytes())
	if len(roots) != 1 || !sameCert(roots[0], h.ca.cert) {
		t.Fatalf("ROOTCA trusted_ca: %d certs", len(roots))
	}

	// ACK, then rotate: the stream gets the new "default" and only that.
	ack := &discovery.DiscoveryRequest{Node: testNode, TypeUrl: resource.SecretType, ResourceNames: req.ResourceNames,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
	if err := stream.Send(ack); err != nil {
		t.Fatal(err)
	}
	rotated := h.ca.issue(t, idA)
	h.store.SetSVID(rotated)
	resp2, err := recvTimeout(stream.Recv)
	if err != nil {
		t.Fatal(err)
	}
	secrets = secretsOf(t, resp2.GetResources())
	if len(secrets) != 1 || secrets[wellknown.SecretCertificate] == nil {
		t.Fatalf("after rotation got %v", keys(secrets))
	}
	checkDefault(t, secrets[wellknown.SecretCertificate], rotated)
	if resp2.GetVersionInfo() == resp.GetVersionInfo() {
		t.Fatal("version did not change")
	}

	// Federation: ROOTCA becomes the SPIFFE validator with one entry per
	// trust domain.
	ack.VersionInfo, ack.ResponseNonce = resp2.GetVersionInfo(), resp2.GetNonce()
	if err := stream.Send(ack); err != nil {
		t.Fatal(err)
	}
	h.federate()
	resp3, err := recvTimeout(stream.Recv)
	if err != nil {
		t.Fatal(err)
	}
	secrets = secretsOf(t, resp3.GetResources())
	rc := secrets[wellknown.SecretRootCA]
	if len(secrets) != 1 || rc == nil {
		t.Fatalf("after federation got %v", keys(secrets))
	}
	checkSPIFFEValidator(t, rc, map[string]*x509.Certificate{"example.org": h.ca.cert, "partner.test": h.fed.cert})
	if got := testutil.ToFloat64(h.srv.m.updates.WithLabelValues("StreamSecrets")); got != 3 {
		t.Fatalf("SDS updates metric = %v, want 3", got)
	}

	// A NACK from the proxy is logged; keys never are.
	nack := &discovery.DiscoveryRequest{Node: testNode, TypeUrl: resource.SecretType, ResourceNames: req.ResourceNames,
		VersionInfo: resp2.GetVersionInfo(), ResponseNonce: resp3.GetNonce(), ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad secret xyz"}}
	if err := stream.Send(nack); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "bad secret xyz") {
		if time.Now().After(deadline) {
			t.Fatalf("NACK not logged:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Fatal("a key appears in the logs")
	}
}

func checkSPIFFEValidator(t *testing.T, rc *tlsv3.Secret, want map[string]*x509.Certificate) {
	t.Helper()
	vc := rc.GetValidationContext()
	if vc.GetTrustedCa() != nil {
		t.Fatal("trusted_ca set together with the SPIFFE validator")
	}
	cv := vc.GetCustomValidatorConfig()
	if cv.GetName() != SPIFFEValidatorName {
		t.Fatalf("validator %q", cv.GetName())
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.GetTrustDomains()) != len(want) {
		t.Fatalf("%d trust domains", len(cfg.GetTrustDomains()))
	}
	for _, td := range cfg.GetTrustDomains() {
		certs := pemCerts(t, td.GetTrustBundle().GetInlineBytes())
		if len(certs) != 1 || !sameCert(certs[0], want[td.GetName()]) {
			t.Fatalf("trust domain %q has wrong roots", td.GetName())
		}
	}
}

func TestSDSDeltaSecrets(t *testing.T) {
	h := startHarness(t)
	h.federate()
	ctx := testCtx(t)
	client := secretservice.NewSecretDiscoveryServiceClient(rawConn(t, h.path))
	stream, err := client.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: testNode, TypeUrl: resource.SecretType,
		ResourceNamesSubscribe: []string{wellknown.SecretCertificate, wellknown.SecretRootCA}}); err != nil {
		t.Fatal(err)
	}
	resp, err := recvTimeout(stream.Recv)
	if err != nil {
		t.Fatal(err)
	}
	var anys []*anypb.Any
	for _, r := range resp.GetResources() {
		if r.GetVersion() == "" {
			t.Fatalf("resource %q without version", r.GetName())
		}
		anys = append(anys, r.GetResource())
	}
	secrets := secretsOf(t, anys)
	if len(secrets) != 2 {
		t.Fatalf("got %v", keys(secrets))
	}
	checkDefault(t, secrets[wellknown.SecretCertificate], h.svidA)
	checkSPIFFEValidator(t, secrets[wellknown.SecretRootCA], map[string]*x509.Certificate{"example.org": h.ca.cert, "partner.test": h.fed.cert})

	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	rotated := h.ca.issue(t, idA)
	h.store.SetSVID(rotated)
	resp2, err := recvTimeout(stream.Recv)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp2.GetResources()) != 1 || resp2.GetResources()[0].GetName() != wellknown.SecretCertificate {
		t.Fatalf("delta after rotation: %d resources", len(resp2.GetResources()))
	}
	checkDefault(t, secretsOf(t, []*anypb.Any{resp2.GetResources()[0].GetResource()})[wellknown.SecretCertificate], rotated)
}

// SDS serves the caller's first identity, and a caller without one is denied.
func TestSDSIdentitySelection(t *testing.T) {
	var denied atomic.Bool
	h := startHarness(t, withAttestor(AttestorFunc(func(Caller) ([]spiffeid.ID, error) {
		if denied.Load() {
			return nil, nil
		}
		return []spiffeid.ID{idB, idA}, nil
	})))
	svidB := h.ca.issue(t, idB)
	h.store.SetSVID(svidB)
	ctx := testCtx(t)
	client := secretservice.NewSecretDiscoveryServiceClient(rawConn(t, h.path))
	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: testNode, ResourceNames: []string{wellknown.SecretCertificate}}); err != nil {
		t.Fatal(err)
	}
	resp, err := recvTimeout(stream.Recv)
	if err != nil {
		t.Fatal(err)
	}
	checkDefault(t, secretsOf(t, resp.GetResources())[wellknown.SecretCertificate], svidB)

	denied.Store(true) // the attestor runs per stream: the next one is denied
	s2, err := client.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s2.Send(&discovery.DiscoveryRequest{Node: testNode, ResourceNames: []string{wellknown.SecretCertificate}})
	if _, err := recvTimeout(s2.Recv); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied caller: %v", err)
	}
}

func recvTimeout[T any](recv func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := recv()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(10 * time.Second):
		var zero T
		return zero, fmt.Errorf("timed out waiting for a response")
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
