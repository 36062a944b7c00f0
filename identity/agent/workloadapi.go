package agent

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// workloadAPI implements the SPIFFE Workload API (X.509-SVID and JWT-SVID
// profiles). The optional WIT-SVID profile stays Unimplemented, as the spec
// requires of servers that do not support it.
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

// checkHeader enforces the SSRF guard of the SPIFFE Workload Endpoint spec.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// view is a response ready to send and the version of what it was built from;
// a stream sends again only when the version changes.
type view struct {
	msg     proto.Message // nil: nothing to send yet
	version string
}

// watch serves a Workload API stream: it sends the caller's view at once and
// again after every store change that alters it. Identities are re-attested
// on every change so rule changes reach open streams too.
func (w *workloadAPI) watch(ctx context.Context, method string, build func(*state, []spiffeid.ID) view, send func(any) error) error {
	if err := checkHeader(ctx); err != nil {
		return err
	}
	s := w.s
	updates := s.m.updates.WithLabelValues(method)
	st := s.store.load()
	sent, last := false, ""
	for {
		_, ids, err := s.identities(ctx)
		if err != nil {
			return err
		}
		v := build(st, ids)
		switch {
		case v.msg != nil && (!sent || v.version != last):
			if err := send(v.msg); err != nil {
				return err
			}
			updates.Inc()
			sent, last = true, v.version
		case v.msg == nil && sent:
			// Everything the caller had was withdrawn; the spec's way to say
			// so on a stream is PermissionDenied.
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		// Before anything is ready (agent still fetching its first SVID) the
		// stream just waits, so workloads starting with the agent block in
		// their first fetch instead of backing off.
		select {
		case <-st.changed:
			st = s.store.load()
		case <-ctx.Done():
			return nil
		case <-s.stopping:
			return status.Error(codes.Unavailable, "agent shutting down")
		}
	}
}

func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	return w.watch(stream.Context(), "FetchX509SVID", w.s.x509SVIDView, stream.SendMsg)
}

func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	return w.watch(stream.Context(), "FetchX509Bundles", func(st *state, _ []spiffeid.ID) view {
		b := st.bundles
		if b == nil {
			return view{}
		}
		b.x509Once.Do(func() {
			r := &workload.X509BundlesResponse{Bundles: make(map[string][]byte, len(b.tds))}
			for _, td := range b.tds {
				r.Bundles[td.IDString()] = b.byTD[td].rootsDER
			}
			b.x509Resp = r
		})
		return view{msg: b.x509Resp, version: strconv.FormatUint(b.gen, 10)}
	}, stream.SendMsg)
}

func (w *workloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	return w.watch(stream.Context(), "FetchJWTBundles", func(st *state, _ []spiffeid.ID) view {
		b := st.bundles
		if b == nil {
			return view{}
		}
		b.jwtOnce.Do(func() {
			r := &workload.JWTBundlesResponse{Bundles: make(map[string][]byte, len(b.tds))}
			for _, td := range b.tds {
				t := b.byTD[td]
				if t.jwksErr != nil {
					w.s.log.Error("cannot encode JWT bundle", "trust_domain", td.String(), "error", t.jwksErr)
					continue
				}
				r.Bundles[td.IDString()] = t.jwks
			}
			b.jwtResp = r
		})
		return view{msg: b.jwtResp, version: strconv.FormatUint(b.gen, 10)}
	}, stream.SendMsg)
}

func (w *workloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	var want spiffeid.ID
	if req.GetSpiffeId() != "" {
		id, err := spiffeid.FromString(req.GetSpiffeId())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
		want = id
	}
	_, ids, err := w.s.identities(ctx)
	if err != nil {
		return nil, err
	}
	if !want.IsZero() {
		if !slices.Contains(ids, want) {
			return nil, status.Errorf(codes.PermissionDenied, "caller may not have %s", want)
		}
		ids = []spiffeid.ID{want}
	}
	if w.s.cfg.JWT == nil {
		return nil, status.Error(codes.Unimplemented, "JWT-SVIDs are not served by this agent")
	}
	resp := &workload.JWTSVIDResponse{Svids: make([]*workload.JWTSVID, 0, len(ids))}
	for _, id := range ids {
		svid, err := w.s.cfg.JWT.FetchJWTSVID(ctx, id, req.GetAudience())
		if err == nil && svid == nil {
			err = errors.New("no JWT-SVID returned")
		}
		if err != nil {
			if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
				return nil, err
			}
			return nil, status.Errorf(codes.Unavailable, "could not fetch JWT-SVID for %s: %v", id, err)
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id.String(), Svid: svid.Marshal()})
	}
	return resp, nil
}

func (w *workloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	switch {
	case req.GetAudience() == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case req.GetSvid() == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, _, err := w.s.identities(ctx); err != nil {
		return nil, err
	}
	b := w.s.store.load().bundles
	if b == nil {
		return nil, status.Error(codes.Unavailable, "no trust bundles yet")
	}
	// The error text names the failed check, never the token.
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), b.jwt, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "converting claims: %v", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// x509SVIDView returns the caller's FetchX509SVID response. It is built once
// per (identity set, store generation) and shared by every fetch in between:
// the DER/PKCS#8 encodings were made at SetSVID time, so building is only
// assembling, and sharing the message saves even that.
func (s *Server) x509SVIDView(st *state, ids []spiffeid.ID) view {
	if s.noViewCache {
		return s.buildX509SVIDView(st, ids)
	}
	key := idsKey(ids)
	if v, ok := st.views.Load(key); ok {
		return *v.(*view)
	}
	v := s.buildX509SVIDView(st, ids)
	actual, _ := st.views.LoadOrStore(key, &v)
	return *actual.(*view)
}

func idsKey(ids []spiffeid.ID) string {
	if len(ids) == 1 {
		return ids[0].String()
	}
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(id.String())
		b.WriteByte(' ') // cannot occur in a SPIFFE ID
	}
	return b.String()
}

func (s *Server) buildX509SVIDView(st *state, ids []spiffeid.ID) view {
	b := st.bundles
	if b == nil {
		return view{}
	}
	var version strings.Builder
	version.WriteString(strconv.FormatUint(b.gen, 10))
	resp := &workload.X509SVIDResponse{}
	own := map[spiffeid.TrustDomain]bool{}
	for _, id := range ids {
		e := st.svids[id]
		if e == nil {
			continue // not issued yet
		}
		if e.keyErr != nil {
			s.log.Error("cannot serve X.509-SVID: private key not exportable as PKCS#8", "spiffe_id", id.String(), "error", e.keyErr)
			continue
		}
		tb := b.byTD[id.TrustDomain()]
		if tb == nil {
			continue // an SVID nobody could verify is not worth serving
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    id.String(),
			X509Svid:    e.chainDER,
			X509SvidKey: e.keyDER,
			Bundle:      tb.rootsDER,
		})
		own[tb.td] = true
		version.WriteByte(',')
		version.WriteString(strconv.FormatUint(e.gen, 10))
	}
	if len(resp.Svids) == 0 {
		return view{}
	}
	for _, td := range b.tds {
		if !own[td] && len(b.byTD[td].roots) > 0 {
			if resp.FederatedBundles == nil {
				resp.FederatedBundles = map[string][]byte{}
			}
			resp.FederatedBundles[td.IDString()] = b.byTD[td].rootsDER
		}
	}
	return view{msg: resp, version: version.String()}
}
