package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-mesh/palisade/test/syncbuf"
)

var (
	testTD = spiffeid.RequireTrustDomainFromString("example.org")
	testID = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
)

// fakeClock is a settable clock for driving rotation and expiry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func testLogger(t testing.TB) (*slog.Logger, *syncbuf.Buffer) {
	t.Helper()
	buf := &syncbuf.Buffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// newTestCA creates a CA in a fresh directory; edit adjusts the config first.
func newTestCA(t testing.TB, clock *fakeClock, edit func(*CAConfig)) (*CA, CAConfig) {
	t.Helper()
	logger, _ := testLogger(t)
	cfg := CAConfig{TrustDomain: testTD, DataDir: t.TempDir(), Now: clock.Now, Logger: logger}
	if edit != nil {
		edit(&cfg)
	}
	ca, err := NewCA(cfg)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca, cfg
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// makeCSR returns a DER CSR signed by key; edit adjusts the template first.
func makeCSR(t testing.TB, key crypto.Signer, id spiffeid.ID, edit func(*x509.CertificateRequest)) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

// makeCACert creates a CA certificate for key, signed by parent (self-signed when
// parent is nil), valid over [nb, na].
func makeCACert(t testing.TB, cn string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer, nb, na time.Time) *x509.Certificate {
	t.Helper()
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             nb,
		NotAfter:              na,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func rootsOf(t testing.TB, ca *CA) [][]byte {
	t.Helper()
	var raws [][]byte
	for _, c := range ca.Bundle().X509Authorities() {
		raws = append(raws, c.Raw)
	}
	return raws
}

func seqOf(t testing.TB, ca *CA) uint64 {
	t.Helper()
	seq, ok := ca.Bundle().SequenceNumber()
	if !ok {
		t.Fatal("bundle has no sequence number")
	}
	return seq
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
