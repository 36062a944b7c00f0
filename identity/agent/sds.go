package agent

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/palisade-mesh/palisade/identity/wellknown"
)

// Secret names as Istio's proxies request them.
const (
	// SPIFFEValidatorName is Envoy's SPIFFE certificate validator, used for
	// wellknown.SecretRootCA when federated trust domains exist so each peer is checked
	// against its own trust domain's roots only.
	SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"
)

// sdsServer dispatches SDS streams to one go-control-plane server and linear
// cache per identity, chosen from the stream's peer credentials. A cache per
// identity keeps one workload's key out of every other workload's reach
// without any per-request filtering.
type sdsServer struct {
	// FetchSecrets stays Unimplemented: the linear cache has no REST fetch.
	secretservice.UnimplementedSecretDiscoveryServiceServer
	s *Server

	mu        sync.Mutex
	ctx       context.Context // Serve's; ends the xDS streams
	prefix    string          // version prefix: an Envoy reconnecting after an agent restart is always answered
	byID      map[spiffeid.ID]*sdsIdentity
	callbacks xdsserver.Callbacks
}

type sdsIdentity struct {
	id    spiffeid.ID
	cache *cache.LinearCache
	xds   xdsserver.Server
	gen   uint64     // store generation last applied
	svid  *svidEntry // last applied
	bgen  uint64     // bundle generation last applied to ROOTCA
}

func newSDSServer(s *Server) *sdsServer {
	d := &sdsServer{s: s, byID: map[spiffeid.ID]*sdsIdentity{}}
	d.callbacks = xdsserver.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discovery.DiscoveryRequest) error {
			d.nack(req.GetErrorDetail(), req.GetResourceNames())
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
			d.nack(req.GetErrorDetail(), req.GetResourceNamesSubscribe())
			return nil
		},
		StreamResponseFunc: func(context.Context, int64, *discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {
			s.m.updates.WithLabelValues("StreamSecrets").Inc()
		},
		StreamDeltaResponseFunc: func(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
			s.m.updates.WithLabelValues("DeltaSecrets").Inc()
		},
	}
	return d
}

// nack logs a secret the proxy rejected: an SDS failure only Envoy sees.
func (d *sdsServer) nack(detail *rpcstatus.Status, names []string) {
	if detail != nil {
		d.s.log.Warn("proxy rejected secret", "resources", names, "error", detail.GetMessage())
	}
}

func (d *sdsServer) start(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ctx = ctx
	d.prefix = strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
}

func (d *sdsServer) StreamSecrets(stream secretservice.SecretDiscoveryService_StreamSecretsServer) error {
	si, err := d.identityFor(stream.Context())
	if err != nil {
		return err
	}
	return si.xds.StreamSecrets(stream)
}

func (d *sdsServer) DeltaSecrets(stream secretservice.SecretDiscoveryService_DeltaSecretsServer) error {
	si, err := d.identityFor(stream.Context())
	if err != nil {
		return err
	}
	return si.xds.DeltaSecrets(stream)
}

// identityFor attests the stream's caller and returns the cache of its first
// (default) identity, creating it filled from the store on first use.
func (d *sdsServer) identityFor(ctx context.Context) (*sdsIdentity, error) {
	_, ids, err := d.s.identities(ctx)
	if err != nil {
		return nil, err
	}
	id := ids[0]
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx == nil {
		return nil, status.Error(codes.Unavailable, "agent not serving")
	}
	si := d.byID[id]
	if si == nil {
		c := cache.NewLinearCache(resource.SecretType, cache.WithVersionPrefix(d.prefix), cache.WithLogger(xdsLogger{d.s.log}))
		si = &sdsIdentity{id: id, cache: c, xds: xdsserver.NewServer(d.ctx, c, d.callbacks)}
		d.syncLocked(si, d.s.store.load())
		d.byID[id] = si
	}
	return si, nil
}

// run pushes store changes into the caches of identities that have streams.
func (d *sdsServer) run(ctx context.Context) {
	for {
		st := d.s.store.load()
		d.mu.Lock()
		for _, si := range d.byID {
			d.syncLocked(si, st)
		}
		d.mu.Unlock()
		select {
		case <-st.changed:
		case <-ctx.Done():
			return
		}
	}
}

// syncLocked brings si's cache to st, touching only the secrets that changed so
// streams watching only the other one get no push.
func (d *sdsServer) syncLocked(si *sdsIdentity, st *state) {
	if si.gen != 0 && st.gen <= si.gen {
		return // a newer generation was already applied
	}
	si.gen = st.gen
	update := map[string]types.Resource{}
	var remove []string

	if e := st.svids[si.id]; e != si.svid {
		si.svid = e
		switch {
		case e == nil:
			remove = append(remove, wellknown.SecretCertificate)
		case e.keyErr != nil:
			d.s.log.Error("cannot serve SDS secret: private key not exportable as PKCS#8", "spiffe_id", si.id.String(), "error", e.keyErr)
			remove = append(remove, wellknown.SecretCertificate)
		default:
			update[wellknown.SecretCertificate] = tlsCertificateSecret(e)
		}
	}

	var bgen uint64
	if st.bundles != nil {
		bgen = st.bundles.gen
	}
	if bgen != si.bgen {
		si.bgen = bgen
		if sec, err := rootCASecret(si.id.TrustDomain(), st.bundles); err != nil {
			d.s.log.Error("cannot build SDS secret", "name", wellknown.SecretRootCA, "spiffe_id", si.id.String(), "error", err)
			remove = append(remove, wellknown.SecretRootCA)
		} else if sec == nil {
			remove = append(remove, wellknown.SecretRootCA)
		} else {
			update[wellknown.SecretRootCA] = sec
		}
	}

	if len(remove) > 0 {
		existing := si.cache.GetResources()
		kept := remove[:0]
		for _, name := range remove {
			if _, ok := existing[name]; ok {
				kept = append(kept, name)
			}
		}
		remove = kept
	}
	if len(update) == 0 && len(remove) == 0 {
		return
	}
	if err := si.cache.UpdateResources(update, remove); err != nil {
		d.s.log.Error("updating SDS cache", "spiffe_id", si.id.String(), "error", err)
	}
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

// tlsCertificateSecret is Istio's "default": chain (leaf first) and PKCS#8 key, PEM.
func tlsCertificateSecret(e *svidEntry) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: wellknown.SecretCertificate,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(e.chainPEM),
			PrivateKey:       inline(e.keyPEM),
		}},
	}
}

// rootCASecret is Istio's "ROOTCA" for an identity in td: td's roots as
// trusted_ca, or, with federation, the SPIFFE validator with each trust
// domain's roots kept apart (a federated CA must not vouch for td's names).
// nil when td has no roots yet.
func rootCASecret(td spiffeid.TrustDomain, b *bundleState) (*tlsv3.Secret, error) {
	if b == nil {
		return nil, nil
	}
	own := b.byTD[td]
	if own == nil || len(own.roots) == 0 {
		return nil, nil
	}
	var domains []*tlsv3.SPIFFECertValidatorConfig_TrustDomain
	for _, t := range b.tds {
		if tb := b.byTD[t]; len(tb.roots) > 0 {
			domains = append(domains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: t.Name(), TrustBundle: inline(tb.rootsPEM)})
		}
	}
	vc := &tlsv3.CertificateValidationContext{}
	if len(domains) == 1 {
		vc.TrustedCa = inline(own.rootsPEM)
	} else {
		cfg := &tlsv3.SPIFFECertValidatorConfig{TrustDomains: domains}
		if err := cfg.ValidateAll(); err != nil {
			return nil, fmt.Errorf("SPIFFE validator config: %w", err)
		}
		a, err := anypb.New(cfg)
		if err != nil {
			return nil, err
		}
		vc.CustomValidatorConfig = &core.TypedExtensionConfig{Name: SPIFFEValidatorName, TypedConfig: a}
	}
	return &tlsv3.Secret{Name: wellknown.SecretRootCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}, nil
}

// xdsLogger routes go-control-plane's logs to slog; its Info is chatty, so Debug.
type xdsLogger struct{ l *slog.Logger }

func (x xdsLogger) Debugf(f string, a ...any) { x.log(slog.LevelDebug, f, a) }
func (x xdsLogger) Infof(f string, a ...any)  { x.log(slog.LevelDebug, f, a) }
func (x xdsLogger) Warnf(f string, a ...any)  { x.log(slog.LevelWarn, f, a) }
func (x xdsLogger) Errorf(f string, a ...any) { x.log(slog.LevelError, f, a) }

func (x xdsLogger) log(level slog.Level, f string, a []any) {
	if x.l.Enabled(context.Background(), level) {
		x.l.Log(context.Background(), level, "sds: "+fmt.Sprintf(f, a...))
	}
}
