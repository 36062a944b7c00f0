package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/palisade-mesh/palisade/test/syncbuf"
)

func TestFetchX509SVID(t *testing.T) {
	h := startHarness(t)
	h.federate()
	ctx := testCtx(t)
	c := h.client(ctx)

	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != idA || !sameCert(svid.Certificates[0], h.svidA.Certificates[0]) {
		t.Fatalf("got %s, want %s", describeSVID(svid), describeSVID(h.svidA))
	}
	// The key that came over the wire (PKCS#8) is the SVID's key.
	if !svid.PrivateKey.Public().(*ecdsa.PublicKey).Equal(h.svidA.PrivateKey.Public()) {
		t.Fatal("private key does not match")
	}

	xc, err := c.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	own, err := xc.Bundles.GetX509BundleForTrustDomain(tdMain)
	if err != nil || len(own.X509Authorities()) != 1 || !sameCert(own.X509Authorities()[0], h.ca.cert) {
		t.Fatalf("own bundle: %v %v", own, err)
	}
	fed, err := xc.Bundles.GetX509BundleForTrustDomain(fedTD)
	if err != nil || !sameCert(fed.X509Authorities()[0], h.fed.cert) {
		t.Fatalf("federated bundle: %v %v", fed, err)
	}
	// The SVID verifies against the bundle it came with.
	if _, _, err := x509svid.Verify(svid.Certificates, xc.Bundles); err != nil {
		t.Fatalf("verify: %v", err)
	}

	bundles, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bundles.Len() != 2 || !bundles.Has(tdMain) || !bundles.Has(fedTD) {
		t.Fatalf("FetchX509Bundles: %d bundles", bundles.Len())
	}
}

func TestFetchX509SVIDMultipleIdentities(t *testing.T) {
	h := startHarness(t, withAttestor(AttestorFunc(func(Caller) ([]spiffeid.ID, error) {
		return []spiffeid.ID{idB, idA}, nil
	})))
	h.store.SetSVID(h.ca.issue(t, idB))
	ctx := testCtx(t)
	svids, err := h.client(ctx).FetchX509SVIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Attestor order is kept: the first is the default identity.
	if len(svids) != 2 || svids[0].ID != idB || svids[1].ID != idA {
		t.Fatalf("got %v", svids)
	}
}

func TestJWTSVID(t *testing.T) {
	var logs syncbuf.Buffer
	h := startHarness(t, withLogger(&logs))
	h.federate()
	ctx := testCtx(t)
	c := h.client(ctx)
	const aud = "spiffe://example.org/backend"

	svid, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != idA || len(svid.Audience) != 1 || svid.Audience[0] != aud {
		t.Fatalf("JWT-SVID %s aud %v", svid.ID, svid.Audience)
	}

	// A requested identity the caller may not have.
	_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: idB})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT for idB: %v, want PermissionDenied", err)
	}
	// A requested identity it may have.
	if s, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: idA}); err != nil || s.ID != idA {
		t.Fatalf("JWT for idA: %v", err)
	}

	jb, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jb.GetJWTBundleForTrustDomain(tdMain)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := b.FindJWTAuthority(h.ca.jwtKID); !ok || !k.(*ecdsa.PublicKey).Equal(&h.ca.jwtKey.PublicKey) {
		t.Fatal("JWT authority missing from bundle")
	}
	if !jb.Has(fedTD) {
		t.Fatal("federated JWT bundle missing")
	}
	// What the client fetched validates offline with the fetched bundles too.
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), jb, []string{aud}); err != nil {
		t.Fatal(err)
	}

	// ValidateJWTSVID through the agent, and the claims it returns.
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h.path))
	resp, err := raw.ValidateJWTSVID(withHeader(ctx), &workload.ValidateJWTSVIDRequest{Audience: aud, Svid: svid.Marshal()})
	if err != nil {
		t.Fatal(err)
	}
	claims := resp.GetClaims().AsMap()
	if resp.GetSpiffeId() != idA.String() || claims["sub"] != idA.String() || claims["tenant"] != "blue" {
		t.Fatalf("validate: id %q claims %v", resp.GetSpiffeId(), claims)
	}
	if _, err := c.ValidateJWTSVID(ctx, svid.Marshal(), aud); err != nil {
		t.Fatalf("go-spiffe ValidateJWTSVID: %v", err)
	}

	// Wrong audience, and a token from a signer outside the bundles.
	if _, err := c.ValidateJWTSVID(ctx, svid.Marshal(), "spiffe://example.org/other"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong audience: %v", err)
	}
	rogue := newTestCA(t, tdMain)
	rogue.jwtKID = h.ca.jwtKID // same kid, other key: the signature must fail
	tok, err := rogue.mintJWT(idA, []string{aud}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ValidateJWTSVID(ctx, tok, aud); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("rogue token: %v", err)
	}
	// Federated issuers validate too.
	fedTok, err := h.fed.mintJWT(spiffeid.RequireFromString("spiffe://partner.test/x"), []string{aud}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := c.ValidateJWTSVID(ctx, fedTok, aud); err != nil || s.ID.TrustDomain() != fedTD {
		t.Fatalf("federated token: %v", err)
	}

	// A failing JWT source is Unavailable (retryable), and the error does not
	// leak as Unknown.
	h.jwt.fail.Store(true)
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}); status.Code(err) != codes.Unavailable {
		t.Fatalf("failing source: %v", err)
	}
	// Audience is mandatory.
	if _, err := raw.FetchJWTSVID(withHeader(ctx), &workload.JWTSVIDRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no audience: %v", err)
	}

	// Requests were logged, tokens never.
	out := logs.String()
	if !strings.Contains(out, "method=ValidateJWTSVID") {
		t.Fatalf("requests not logged:\n%s", out)
	}
	sig := svid.Marshal()[strings.LastIndexByte(svid.Marshal(), '.')+1:]
	if strings.Contains(out, sig) || strings.Contains(out, tok[strings.LastIndexByte(tok, '.')+1:]) {
		t.Fatal("a token appears in the logs")
	}
}

// x509Watcher collects WatchX509Context updates.
type x509Watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w *x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w *x509Watcher) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

func (w *x509Watcher) next(t *testing.T) *workloadapi.X509Context {
	t.Helper()
	select {
	case c := <-w.updates:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no X.509 context update")
		return nil
	}
}

func TestWatchX509ContextRotation(t *testing.T) {
	h := startHarness(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	c := h.client(ctx)
	w := &x509Watcher{updates: make(chan *workloadapi.X509Context, 10), errs: make(chan error, 1)}
	watchDone := make(chan error, 1)
	go func() { watchDone <- c.WatchX509Context(ctx, w) }()

	first := w.next(t)
	if !sameCert(first.DefaultSVID().Certificates[0], h.svidA.Certificates[0]) {
		t.Fatalf("first update: %s", describeSVID(first.DefaultSVID()))
	}

	// A change the caller does not get (another identity's SVID) must not
	// produce an update: the next one has to be the rotation itself.
	h.store.SetSVID(h.ca.issue(t, idB))
	time.Sleep(50 * time.Millisecond) // let the stream wake for B's change alone
	rotated := h.ca.issue(t, idA)
	h.store.SetSVID(rotated)
	second := w.next(t)
	if !sameCert(second.DefaultSVID().Certificates[0], rotated.Certificates[0]) {
		t.Fatalf("second update is %s, want rotated %s", describeSVID(second.DefaultSVID()), describeSVID(rotated))
	}

	// A bundle change reaches the stream as well.
	h.federate()
	third := w.next(t)
	if !third.Bundles.Has(fedTD) {
		t.Fatal("bundle update missing federated bundle")
	}
	select {
	case extra := <-w.updates:
		t.Fatalf("unexpected extra update %s", describeSVID(extra.DefaultSVID()))
	case <-time.After(100 * time.Millisecond):
	}
	if got := testutil.ToFloat64(h.srv.m.updates.WithLabelValues("FetchX509SVID")); got != 3 {
		t.Fatalf("stream updates metric = %v, want 3", got)
	}
	cancel()
	<-watchDone
}

// A workload started before the agent has its SVID blocks in its first fetch
// and gets the SVID as soon as it arrives.
func TestFetchWaitsForFirstSVID(t *testing.T) {
	h := startHarness(t, emptyStore())
	ctx := testCtx(t)
	c := h.client(ctx)
	got := make(chan *x509svid.SVID, 1)
	errs := make(chan error, 1)
	go func() {
		s, err := c.FetchX509SVID(ctx)
		if err != nil {
			errs <- err
			return
		}
		got <- s
	}()
	select {
	case s := <-got:
		t.Fatalf("fetch returned %s before any SVID existed", describeSVID(s))
	case err := <-errs:
		t.Fatalf("fetch failed: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	svid := h.ca.issue(t, idA)
	h.store.SetSVID(svid) // not servable yet: no bundle to verify it with
	h.store.SetBundles(spiffebundleSet(t, h.ca))
	select {
	case s := <-got:
		if !sameCert(s.Certificates[0], svid.Certificates[0]) {
			t.Fatalf("got %s", describeSVID(s))
		}
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("fetch did not return after the SVID arrived")
	}
}

// Withdrawing the caller's only SVID ends its stream with PermissionDenied.
func TestDeleteSVIDEndsStream(t *testing.T) {
	h := startHarness(t)
	ctx := testCtx(t)
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h.path))
	stream, err := raw.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	h.store.DeleteSVID(idA)
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after delete: %v", err)
	}
}

func rawConn(t testing.TB, path string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestMissingSecurityHeader(t *testing.T) {
	h := startHarness(t)
	ctx := testCtx(t)
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h.path))

	stream, err := raw.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchX509SVID without header: %v", err)
	}
	wrong := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "TRUE") // case sensitive
	if _, err := raw.FetchJWTSVID(wrong, &workload.JWTSVIDRequest{Audience: []string{"x"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchJWTSVID with wrong header: %v", err)
	}
	if _, err := raw.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ValidateJWTSVID without header: %v", err)
	}
	bs, err := raw.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchJWTBundles without header: %v", err)
	}
	// The unsupported WIT-SVID profile says so, as the spec requires.
	ws, err := raw.FetchWITSVID(withHeader(ctx), &workload.WITSVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchWITSVID: %v", err)
	}
	if got := testutil.ToFloat64(h.srv.m.requests.WithLabelValues("FetchX509SVID", "InvalidArgument")); got != 1 {
		t.Fatalf("requests metric = %v", got)
	}
}

func TestNoIdentityPermissionDenied(t *testing.T) {
	h := startHarness(t, withAttestor(AttestorFunc(func(Caller) ([]spiffeid.ID, error) { return nil, nil })))
	ctx := testCtx(t)
	c := h.client(ctx)
	if _, err := c.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if _, err := c.FetchX509Bundles(ctx); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if _, err := c.FetchJWTBundles(ctx); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	if h.jwt.calls.Load() != 0 {
		t.Fatal("JWT source was asked for a denied caller")
	}
	if got := testutil.ToFloat64(h.srv.m.requests.WithLabelValues("FetchX509SVID", "PermissionDenied")); got != 1 {
		t.Fatalf("requests metric = %v", got)
	}
}

// The attestor sees the real peer credentials of the test process.
func TestAttestorSeesPeerCredentials(t *testing.T) {
	seen := make(chan Caller, 16)
	h := startHarness(t, withAttestor(AttestorFunc(func(c Caller) ([]spiffeid.ID, error) {
		seen <- c
		return []spiffeid.ID{idA}, nil
	})))
	ctx := testCtx(t)
	if _, err := h.client(ctx).FetchX509SVID(ctx); err != nil {
		t.Fatal(err)
	}
	c := <-seen
	if c.PID != os.Getpid() || c.UID != os.Getuid() || c.GID != os.Getgid() {
		t.Fatalf("caller %+v, want pid %d uid %d gid %d", c, os.Getpid(), os.Getuid(), os.Getgid())
	}
}

// The cached response is shared within a generation and rebuilt after one.
func TestX509ViewCache(t *testing.T) {
	ca := newTestCA(t, tdMain)
	s := NewStore()
	s.SetBundles(spiffebundleSet(t, ca))
	s.SetSVID(ca.issue(t, idA))
	srv, err := NewServer(ServerConfig{SocketPath: "unused", Store: s, Attestor: AllowAll(idA)})
	if err != nil {
		t.Fatal(err)
	}
	st := s.load()
	v1 := srv.x509SVIDView(st, []spiffeid.ID{idA})
	v2 := srv.x509SVIDView(st, []spiffeid.ID{idA})
	if v1.msg == nil || v1.msg != v2.msg {
		t.Fatal("view not shared within a generation")
	}
	s.SetSVID(ca.issue(t, idB))
	v3 := srv.x509SVIDView(s.load(), []spiffeid.ID{idA})
	if v3.msg == v1.msg || v3.version != v1.version {
		t.Fatalf("after an unrelated change: rebuilt=%v, version %q -> %q (must be equal)", v3.msg != v1.msg, v1.version, v3.version)
	}
	s.SetSVID(ca.issue(t, idA))
	if v4 := srv.x509SVIDView(s.load(), []spiffeid.ID{idA}); v4.version == v1.version {
		t.Fatal("rotation did not change the version")
	}
	resp := v1.msg.(*workload.X509SVIDResponse)
	certs, err := x509.ParseCertificates(resp.Svids[0].X509Svid)
	if err != nil || len(certs) != 1 {
		t.Fatalf("x509_svid: %v", err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(resp.Svids[0].X509SvidKey); err != nil {
		t.Fatalf("x509_svid_key is not PKCS#8: %v", err)
	}
	if !strings.HasPrefix(resp.Svids[0].SpiffeId, "spiffe://example.org/") {
		t.Fatal(resp.Svids[0].SpiffeId)
	}
}
