package caclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/palisade-mesh/palisade/identity"
	"github.com/palisade-mesh/palisade/identity/caclient"
	"github.com/palisade-mesh/palisade/identity/caserver"
	"github.com/palisade-mesh/palisade/identity/identitypb"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("cluster.local")
	reviews = spiffeid.RequireFromPath(td, "/ns/default/sa/reviews")
	ratings = spiffeid.RequireFromPath(td, "/ns/default/sa/ratings")
)

// clock runs with real time, and tests move it forward, for the CA, the token
// store and the server alike.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.offset) }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

type fixture struct {
	ca     *identity.CA
	tokens *identity.Tokens
	srv    *caserver.Server
	addr   string
	clock  *clock
	stop   func() // stops serving; serve starts again on addr
}

// startCA runs a real CA API server on loopback.
func startCA(t *testing.T) *fixture {
	t.Helper()
	return startCAWith(t, nil)
}

// startCAWith is startCA with a redeemer of service-account tokens.
func startCAWith(t *testing.T, serviceAccountTokens caserver.TokenRedeemer) *fixture {
	t.Helper()
	clk := &clock{}
	dir := t.TempDir()
	ca, err := identity.NewCA(identity.CAConfig{TrustDomain: td, DataDir: dir, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.NewTokens(identity.TokensConfig{Path: dir + "/tokens.json", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := caserver.New(caserver.Config{Address: "127.0.0.1:0", CA: ca, Tokens: tokens, ServiceAccountTokens: serviceAccountTokens, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, tokens: tokens, srv: srv, addr: l.Addr().String(), clock: clk}
	f.serve(t, l)
	t.Cleanup(func() { f.stop() })
	return f
}

func (f *fixture) serve(t *testing.T, l net.Listener) {
	t.Helper()
	if l == nil {
		var err error
		if l, err = net.Listen("tcp", f.addr); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.srv.Serve(ctx, l) }()
	f.stop = func() { cancel(); <-done }
}

func (f *fixture) client(t *testing.T) *caclient.Client {
	t.Helper()
	c, err := caclient.New(caclient.Config{Address: f.addr, TrustDomain: td, Roots: f.ca.Bundle().X509Authorities()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) token(t *testing.T, id spiffeid.ID) string {
	t.Helper()
	tok, _, err := f.tokens.Create(id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func wantCode(t *testing.T, err error, code codes.Code, msgPart string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), msgPart) {
		t.Fatalf("got %v, want code %v with %q", err, code, msgPart)
	}
}

func TestTokenGivesExactlyItsIdentityOnce(t *testing.T) {
	f := startCA(t)
	c := f.client(t)
	ctx := context.Background()
	tok := f.token(t, reviews)

	svid, bundles, err := c.SignWithToken(ctx, reviews, tok, 0)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != reviews {
		t.Fatalf("issued %s", svid.ID)
	}
	if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); got < 59*time.Minute || got > 62*time.Minute {
		t.Errorf("default lifetime %v, want about 1h", got)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil {
		t.Fatalf("issued SVID does not verify against the bundles sent with it: %v", err)
	}
	_, _, err = c.SignWithToken(ctx, reviews, tok, 0)
	wantCode(t, err, codes.Unauthenticated, "already used")
}

func TestRefusals(t *testing.T) {
	f := startCA(t)
	c := f.client(t)
	ctx := context.Background()

	_, _, err := c.SignWithToken(ctx, reviews, "pal1.not-a-token", 0)
	wantCode(t, err, codes.Unauthenticated, "token")

	// A valid token for reviews, used for a CSR that asks for ratings.
	_, _, err = c.SignWithToken(ctx, ratings, f.token(t, reviews), 0)
	wantCode(t, err, codes.PermissionDenied, ratings.String())

	expiring := f.token(t, reviews)
	f.clock.Add(2 * time.Minute)
	_, _, err = c.SignWithToken(ctx, reviews, expiring, 0)
	wantCode(t, err, codes.Unauthenticated, "expired")

	// No token and no certificate.
	conn := rawConn(t, f, nil)
	_, err = identitypb.NewCertificateAuthorityClient(conn).SignX509SVID(ctx, &identitypb.SignX509SVIDRequest{Csr: csrFor(t, reviews, nil)})
	wantCode(t, err, codes.Unauthenticated, "token")
}

func TestCSRShapeIsChecked(t *testing.T) {
	f := startCA(t)
	ctx := context.Background()
	conn := rawConn(t, f, nil)
	api := identitypb.NewCertificateAuthorityClient(conn)
	for name, csr := range map[string][]byte{
		"extra DNS SAN": csrFor(t, reviews, func(r *x509.CertificateRequest) { r.DNSNames = []string{"evil.example"} }),
		"garbage":       []byte("not a CSR"),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+f.token(t, reviews))
			_, err := api.SignX509SVID(ctx, &identitypb.SignX509SVIDRequest{Csr: csr})
			wantCode(t, err, codes.InvalidArgument, "CSR")
		})
	}
}

func TestRenewalNeedsAValidSVIDOfTheSameIdentity(t *testing.T) {
	f := startCA(t)
	c := f.client(t)
	ctx := context.Background()
	first, _, err := c.SignWithToken(ctx, reviews, f.token(t, reviews), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := c.Renew(ctx, first, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if second.ID != reviews || second.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("renewal gave %s serial %v", second.ID, second.Certificates[0].SerialNumber)
	}
	if second.PrivateKey.Public().(*ecdsa.PublicKey).Equal(first.PrivateKey.Public()) {
		t.Fatal("renewal reused the key")
	}

	// Holding reviews' SVID, ask for ratings.
	conn := rawConn(t, f, second)
	_, err = identitypb.NewCertificateAuthorityClient(conn).SignX509SVID(ctx, &identitypb.SignX509SVIDRequest{Csr: csrFor(t, ratings, nil)})
	wantCode(t, err, codes.PermissionDenied, ratings.String())

	// Once expired, the SVID no longer authenticates.
	f.clock.Add(time.Minute)
	_, _, err = c.Renew(ctx, second, 0)
	wantCode(t, err, codes.Unauthenticated, "expired")
}

func TestJWTSVIDAndBundleWatch(t *testing.T) {
	f := startCA(t)
	c := f.client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svid, _, err := c.SignWithToken(ctx, reviews, f.token(t, reviews), 0)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := c.MintJWT(ctx, svid, []string{"payments"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), f.ca.Bundle(), []string{"payments"}); err != nil {
		t.Fatalf("JWT-SVID does not validate against the CA's bundle: %v", err)
	}
	_, err = c.MintJWT(ctx, svid, nil, 0)
	wantCode(t, err, codes.InvalidArgument, "audience")

	// The watch sends the bundle at once, then again when the CA prepares its next
	// root (at half of the root's lifetime).
	got := make(chan *spiffebundle.Set, 4)
	go func() { _ = c.WatchBundles(ctx, svid, func(s *spiffebundle.Set) { got <- s }) }()
	first := <-got
	b, _ := first.Get(td)
	if n := len(b.X509Authorities()); n != 1 {
		t.Fatalf("first bundle has %d roots, want 1", n)
	}
	root := f.ca.Bundle().X509Authorities()[0]
	f.clock.Add(root.NotAfter.Sub(root.NotBefore)/2 + time.Minute)
	if err := f.ca.Tick(); err != nil {
		t.Fatal(err)
	}
	select {
	case next := <-got:
		b, _ := next.Get(td)
		if n := len(b.X509Authorities()); n != 2 {
			t.Fatalf("after preparing the next root the bundle has %d roots, want 2", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no bundle update after CA rotation was prepared")
	}
}

func TestKeeperRenewsAtHalfLife(t *testing.T) {
	f := startCA(t)
	c := f.client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tok := f.token(t, reviews)
	svids := make(chan *x509svid.SVID, 8)
	k := caclient.NewKeeper(caclient.KeeperConfig{
		Client: c, ID: reviews, TTL: 10 * time.Second,
		Token:  func() (string, error) { return tok, nil },
		OnSVID: func(s *x509svid.SVID) { svids <- s },
	})
	start := time.Now()
	go func() { _ = k.Run(ctx) }()
	var got []*x509svid.SVID
	for len(got) < 2 {
		select {
		case s := <-svids:
			got = append(got, s)
		case <-time.After(20 * time.Second):
			t.Fatalf("keeper published %d SVIDs in 20s, want a renewal after ~5s", len(got))
		}
	}
	if elapsed := time.Since(start); elapsed < 4*time.Second {
		t.Fatalf("renewed after %v, want about half of the 10s lifetime", elapsed)
	}
	if !got[1].Certificates[0].NotAfter.After(got[0].Certificates[0].NotAfter) {
		t.Fatal("renewed SVID does not outlive the first")
	}
}

// While the CA is down the keeper keeps its SVID and retries; when the CA is back,
// it renews.
func TestKeeperRidesOutAnUnreachableCA(t *testing.T) {
	f := startCA(t)
	c := f.client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tok := f.token(t, reviews)
	svids := make(chan *x509svid.SVID, 8)
	failures := &recorder{msg: "SVID not renewed; retrying", seen: make(chan struct{}, 64)}
	k := caclient.NewKeeper(caclient.KeeperConfig{
		Client: c, ID: reviews, TTL: 10 * time.Second, MaxBackoff: 500 * time.Millisecond,
		Token:  func() (string, error) { return tok, nil },
		OnSVID: func(s *x509svid.SVID) { svids <- s },
		Logger: slog.New(failures),
	})
	go func() { _ = k.Run(ctx) }()
	first := <-svids
	f.stop()
	// The renewal at half-life (~5s) fails, and again; nothing is published.
	for range 2 {
		select {
		case <-failures.seen:
		case <-time.After(15 * time.Second):
			t.Fatal("no failed renewal logged while the CA was down")
		}
	}
	select {
	case s := <-svids:
		t.Fatalf("an SVID (serial %v) was published while the CA was down", s.Certificates[0].SerialNumber)
	default:
	}
	f.serve(t, nil)
	select {
	case s := <-svids:
		if s.ID != reviews || s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
			t.Fatalf("after the CA came back: %s serial %v", s.ID, s.Certificates[0].SerialNumber)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal within 5s of the CA coming back")
	}
}

// recorder is a slog handler that signals each record with a given message.
type recorder struct {
	msg  string
	seen chan struct{}
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message == r.msg {
		select {
		case r.seen <- struct{}{}:
		default:
		}
	}
	return nil
}

func csrFor(t *testing.T, id spiffeid.ID, edit func(*x509.CertificateRequest)) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// rawConn dials the CA API with a hand-made request, optionally presenting svid.
func rawConn(t *testing.T, f *fixture, svid *x509svid.SVID) *grpc.ClientConn {
	t.Helper()
	conf := tlsconfig.TLSClientConfig(f.ca.Bundle(), tlsconfig.AuthorizeID(caserver.ServerID(td)))
	if svid != nil {
		conf = tlsconfig.MTLSClientConfig(svid, f.ca.Bundle(), tlsconfig.AuthorizeID(caserver.ServerID(td)))
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
