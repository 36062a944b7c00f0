package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/palisade-mesh/palisade/test/syncbuf"
)

var (
	idA    = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/a")
	idB    = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/b")
	fedTD  = spiffeid.RequireTrustDomainFromString("partner.test")
	tdMain = spiffeid.RequireTrustDomainFromString("example.org")
)

// testCA is a self-signed ECDSA P-256 CA for one trust domain that issues
// X.509-SVIDs, plus the ES256 key that signs its JWT-SVIDs.
type testCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	jwtKey *ecdsa.PrivateKey
	jwtKID string
	serial atomic.Int64
}

func newTestCA(t testing.TB, td spiffeid.TrustDomain) *testCA {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"palisade test"}, CommonName: td.Name() + " root"},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{td: td, cert: cert, key: key, jwtKey: mustKey(t), jwtKID: td.Name() + "-jwt-1"}
	ca.serial.Store(100)
	return ca
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue returns a fresh X.509-SVID for id; each call has a new key and serial,
// which is what a rotation looks like.
func (ca *testCA) issue(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)),
		URIs:         []*url.URL{id.URL()},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// bundle is the CA's SPIFFE bundle: its root and its JWT authority.
func (ca *testCA) bundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
	if err := b.AddJWTAuthority(ca.jwtKID, &ca.jwtKey.PublicKey); err != nil {
		t.Fatal(err)
	}
	return b
}

// mintJWT signs an ES256 JWT-SVID with the CA's JWT key.
func (ca *testCA) mintJWT(id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: ca.jwtKey, KeyID: ca.jwtKID}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", err
	}
	now := time.Now()
	claims := jwt.Claims{
		Subject:  id.String(),
		Audience: audience,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}
	return jwt.Signed(signer).Claims(claims).Claims(map[string]any{"tenant": "blue"}).Serialize()
}

// fakeJWT is a JWTSource that signs locally with the CA's JWT key.
type fakeJWT struct {
	ca    *testCA
	calls atomic.Int64
	fail  atomic.Bool
}

func (f *fakeJWT) FetchJWTSVID(_ context.Context, id spiffeid.ID, audience []string) (*jwtsvid.SVID, error) {
	f.calls.Add(1)
	if f.fail.Load() {
		return nil, errors.New("CA unreachable")
	}
	tok, err := f.ca.mintJWT(id, audience, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseInsecure(tok, audience)
}

// harness runs a Server on a fresh socket.
type harness struct {
	t       testing.TB
	ca      *testCA
	fed     *testCA
	store   *Store
	jwt     *fakeJWT
	reg     *prometheus.Registry
	srv     *Server
	path    string
	dir     string
	cancel  context.CancelFunc
	done    chan error
	svidA   *x509svid.SVID
	stopped bool
	noCache bool
}

type harnessOpt func(*ServerConfig, *harness)

func withAttestor(a Attestor) harnessOpt {
	return func(c *ServerConfig, _ *harness) { c.Attestor = a }
}

func withSocket(mode os.FileMode, gid int) harnessOpt {
	return func(c *ServerConfig, _ *harness) { c.SocketMode, c.SocketGroup = mode, gid }
}

// withLogger captures the server's logs at Debug level.
func withLogger(buf *syncbuf.Buffer) harnessOpt {
	return func(c *ServerConfig, _ *harness) {
		c.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

// withoutViewCache turns the response memo off, to measure what it saves.
func withoutViewCache() harnessOpt { return func(_ *ServerConfig, h *harness) { h.noCache = true } }

// emptyStore starts the server before any SVID or bundle exists.
func emptyStore() harnessOpt { return func(_ *ServerConfig, h *harness) { h.svidA = nil } }

// shortTempDir keeps socket paths well under the 108-byte sun_path limit.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startHarness(t testing.TB, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, ca: newTestCA(t, tdMain), fed: newTestCA(t, fedTD), store: NewStore(), reg: prometheus.NewRegistry()}
	h.jwt = &fakeJWT{ca: h.ca}
	h.dir = shortTempDir(t)
	h.path = filepath.Join(h.dir, "agent.sock")
	h.svidA = h.ca.issue(t, idA)
	cfg := ServerConfig{
		SocketPath: h.path,
		Store:      h.store,
		JWT:        h.jwt,
		Attestor:   AllowAll(idA),
		Registerer: h.reg,
	}
	for _, o := range opts {
		o(&cfg, h)
	}
	if h.svidA != nil {
		h.store.SetBundles(spiffebundle.NewSet(h.ca.bundle(t)))
		h.store.SetSVID(h.svidA)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	srv.noViewCache = h.noCache
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- srv.Serve(ctx) }()
	waitForSocket(t, h.path, h.done)
	t.Cleanup(h.stop)
	return h
}

// waitForSocket waits until the server accepts connections on path (a stale
// socket file left at path does not count).
func waitForSocket(t testing.TB, path string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("Serve returned early: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("socket %s did not appear", path)
}

func (h *harness) stop() {
	if h.stopped {
		return
	}
	h.stopped = true
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		h.t.Errorf("Serve did not return after cancel")
	}
}

// federate adds the partner trust domain's bundle.
func (h *harness) federate() {
	h.store.SetBundles(spiffebundle.NewSet(h.ca.bundle(h.t), h.fed.bundle(h.t)))
}

func (h *harness) client(ctx context.Context) *workloadapi.Client {
	h.t.Helper()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+h.path))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func sameCert(a, b *x509.Certificate) bool { return a != nil && b != nil && a.Equal(b) }

func describeSVID(s *x509svid.SVID) string {
	if s == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s serial=%s", s.ID, s.Certificates[0].SerialNumber)
}

func spiffebundleSet(t testing.TB, cas ...*testCA) *spiffebundle.Set {
	t.Helper()
	set := spiffebundle.NewSet()
	for _, ca := range cas {
		set.Add(ca.bundle(t))
	}
	return set
}
