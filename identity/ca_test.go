package identity

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestNewCAFirstStartAndRestart(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, cfg := newTestCA(t, clock, nil)

	dir := filepath.Join(cfg.DataDir, "ca")
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o700 {
		t.Errorf("CA directory mode = %o, want 700", got)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != 0o600 {
			t.Errorf("%s mode = %o, want 600", e.Name(), got)
		}
	}
	wantFiles := []string{"slot-1-jwt.key", "slot-1-root.key", "slot-1-root.pem", "state.json"}
	if !slices.Equal(names, wantFiles) {
		t.Errorf("CA files = %v, want %v", names, wantFiles)
	}

	roots := ca.Bundle().X509Authorities()
	if len(roots) != 1 {
		t.Fatalf("bundle has %d roots, want 1", len(roots))
	}
	root := roots[0]
	switch {
	case !root.IsCA || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		t.Errorf("root IsCA=%v KeyUsage=%v", root.IsCA, root.KeyUsage)
	case root.MaxPathLen != 0 || !root.MaxPathLenZero:
		t.Errorf("root MaxPathLen=%d zero=%v, want 0", root.MaxPathLen, root.MaxPathLenZero)
	case len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://example.org":
		t.Errorf("root URIs = %v, want [spiffe://example.org]", root.URIs)
	case !strings.Contains(root.Subject.CommonName, "example.org") || !slices.Equal(root.Subject.Organization, []string{"Palisade"}):
		t.Errorf("root subject = %v", root.Subject)
	case root.NotAfter.Sub(clock.Now()) < defaultCATTL-time.Second || root.NotAfter.Sub(clock.Now()) > defaultCATTL:
		t.Errorf("root lifetime ends %v after now, want %v", root.NotAfter.Sub(clock.Now()), defaultCATTL)
	}
	if len(ca.Bundle().JWTAuthorities()) != 1 {
		t.Errorf("bundle has %d JWT keys, want 1", len(ca.Bundle().JWTAuthorities()))
	}
	for _, name := range []string{"slot-1-root.key", "slot-1-jwt.key"} {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		if !bytes.Contains(data, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds no private key", name)
		}
	}

	clock.Add(time.Hour)
	again, err := NewCA(cfg)
	if err != nil {
		t.Fatalf("second NewCA: %v", err)
	}
	if !slices.EqualFunc(rootsOf(t, ca), rootsOf(t, again), bytes.Equal) {
		t.Error("restart created a new root instead of loading the saved one")
	}
	if !again.Bundle().Equal(ca.Bundle()) {
		t.Error("restart changed the bundle (JWT keys, sequence or refresh hint)")
	}
}

func TestNewCAConfigErrors(t *testing.T) {
	other := spiffebundle.New(spiffeid.RequireTrustDomainFromString("other.org"))
	tests := []struct {
		name string
		edit func(*CAConfig)
		want string
	}{
		{"no trust domain", func(c *CAConfig) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain is required"},
		{"no data dir", func(c *CAConfig) { c.DataDir = "" }, "data directory is required"},
		{"negative CA TTL", func(c *CAConfig) { c.CATTL = -time.Hour }, "CA TTL"},
		{"default above max", func(c *CAConfig) { c.DefaultSVIDTTL = 2 * time.Hour; c.MaxSVIDTTL = time.Hour }, "default SVID TTL"},
		{"JWT default above max", func(c *CAConfig) { c.DefaultJWTTTL = 48 * time.Hour }, "default JWT TTL"},
		{"own trust domain federated", func(c *CAConfig) { c.Federated = []*spiffebundle.Bundle{spiffebundle.New(testTD)} }, "own trust domain"},
		{"duplicate federated", func(c *CAConfig) { c.Federated = []*spiffebundle.Bundle{other, other} }, "two federated bundles"},
		{"nil federated", func(c *CAConfig) { c.Federated = []*spiffebundle.Bundle{nil} }, "nil federated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := CAConfig{TrustDomain: testTD, DataDir: t.TempDir()}
			tt.edit(&cfg)
			_, err := NewCA(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewCA error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestNewCACorruptState(t *testing.T) {
	clock := newFakeClock(time.Now())
	_, cfg := newTestCA(t, clock, nil)
	dir := filepath.Join(cfg.DataDir, "ca")
	// A root key that does not match the root certificate must not be used.
	if err := os.WriteFile(filepath.Join(dir, "slot-1-root.key"), must(encodeECKeyPEM(newP256(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCA(cfg); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("NewCA with a swapped key: error = %v, want a key mismatch", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCA(cfg); err == nil || !strings.Contains(err.Error(), "state.json") {
		t.Fatalf("NewCA with a truncated state: error = %v, want one naming state.json", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestSignX509SVID(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(t, clock, nil)
	now := clock.Now()
	key := newP256(t)
	csr := makeCSR(t, key, testID, nil)

	tests := []struct {
		name    string
		ttl     time.Duration
		want    time.Duration // lifetime from now
		wantErr error
	}{
		{"default", 0, time.Hour, nil},
		{"negative means default", -time.Minute, time.Hour, nil},
		{"explicit", 2 * time.Hour, 2 * time.Hour, nil},
		{"minimum", MinTTL, MinTTL, nil},
		{"clamped to max", 48 * time.Hour, 24 * time.Hour, nil},
		{"below minimum", 5 * time.Second, 0, ErrInvalidTTL},
	}
	var serials []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := ca.SignX509SVID(csr, testID, tt.ttl)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) != 1 {
				t.Fatalf("chain has %d certificates, want only the leaf (the root is in the bundle)", len(chain))
			}
			leaf := chain[0]
			if got := leaf.NotAfter.Sub(now); got < tt.want-time.Second || got > tt.want {
				t.Errorf("lifetime = %v, want %v", got, tt.want)
			}
			if got := now.Sub(leaf.NotBefore); got < 0 || got > clockSkew+time.Second {
				t.Errorf("NotBefore %v before now, want a small backdate", got)
			}
			checkSVIDLeaf(t, leaf, testID)
			if !key.PublicKey.Equal(leaf.PublicKey) {
				t.Error("leaf does not certify the CSR's key")
			}
			if leaf.SerialNumber.BitLen() > 128 || slices.Contains(serials, leaf.SerialNumber.String()) {
				t.Errorf("serial %v is not a fresh 128-bit number", leaf.SerialNumber)
			}
			serials = append(serials, leaf.SerialNumber.String())
			id, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(now))
			if err != nil || id != testID {
				t.Errorf("Verify = %v, %v; want %v", id, err, testID)
			}
		})
	}
}

// checkSVIDLeaf asserts the X509-SVID spec's rules for leaves.
func checkSVIDLeaf(t *testing.T, leaf *x509.Certificate, id spiffeid.ID) {
	t.Helper()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URI SANs = %v, want [%v]", leaf.URIs, id)
	}
	if len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		t.Errorf("unexpected SANs: IP %v email %v", leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v, want a non-CA leaf", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want digitalSignature only", leaf.KeyUsage)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want serverAuth, clientAuth", leaf.ExtKeyUsage)
	}
}

func TestSignX509SVIDRefusals(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(t, clock, nil)
	key := newP256(t)
	foreign := spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/web")
	other := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/db")

	if _, err := ca.SignX509SVID(makeCSR(t, key, foreign, nil), foreign, 0); !errors.Is(err, ErrIdentityMismatch) || !strings.Contains(err.Error(), "not in trust domain") {
		t.Errorf("foreign trust domain: error = %v, want ErrIdentityMismatch", err)
	}
	if _, err := ca.SignX509SVID(makeCSR(t, key, other, nil), testID, 0); !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("CSR for another identity: error = %v, want ErrIdentityMismatch", err)
	}
	if _, err := ca.SignX509SVID([]byte("junk"), testID, 0); !errors.Is(err, ErrInvalidCSR) {
		t.Errorf("junk CSR: error = %v, want ErrInvalidCSR", err)
	}
}

func TestSVIDNeverOutlivesRoot(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = 2 * time.Hour })
	clock.Add(80 * time.Minute) // past half-life, before activation: the old root still signs
	if err := ca.Tick(); err != nil {
		t.Fatal(err)
	}
	root := ca.x509Signer().cert
	chain, err := ca.SignX509SVID(makeCSR(t, newP256(t), testID, nil), testID, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(root.NotAfter) {
		t.Errorf("leaf NotAfter = %v, want it clamped to the root's %v", chain[0].NotAfter, root.NotAfter)
	}
	tok, exp, err := ca.MintJWTSVID(testID, []string{"aud"}, 24*time.Hour)
	if err != nil || tok == "" {
		t.Fatal(err)
	}
	if exp.After(root.NotAfter) {
		t.Errorf("JWT expires %v, after its key's slot ends at %v", exp, root.NotAfter)
	}
}

func TestSignServerCert(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(t, clock, nil)
	serverID := spiffeid.RequireFromString("spiffe://example.org/palisaded")
	key := newP256(t)

	chain, err := ca.SignServerCert(&key.PublicKey, serverID, []string{"palisaded.palisade-system.svc", "localhost"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	checkSVIDLeaf(t, leaf, serverID)
	if !slices.Equal(leaf.DNSNames, []string{"palisaded.palisade-system.svc", "localhost"}) {
		t.Errorf("DNS SANs = %v", leaf.DNSNames)
	}
	if err := leaf.VerifyHostname("palisaded.palisade-system.svc"); err != nil {
		t.Errorf("VerifyHostname: %v", err)
	}
	if _, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(clock.Now())); err != nil {
		t.Errorf("Verify: %v", err)
	}
	// Names that are addresses become IP SANs, for a server reached by address.
	chain, err = ca.SignServerCert(&key.PublicKey, serverID, []string{"localhost", "127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if leaf := chain[0]; !slices.Equal(leaf.DNSNames, []string{"localhost"}) || leaf.VerifyHostname("127.0.0.1") != nil || leaf.VerifyHostname("127.0.0.2") == nil {
		t.Errorf("DNS SANs %v, IP SANs %v; want localhost and 127.0.0.1 only", leaf.DNSNames, leaf.IPAddresses)
	}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignServerCert(&rsaKey.PublicKey, serverID, nil, 0); err == nil || !strings.Contains(err.Error(), "ECDSA P-256") {
		t.Errorf("RSA key: error = %v, want a key type refusal", err)
	}
	if _, err := ca.SignServerCert(&key.PublicKey, serverID, []string{""}, 0); err == nil {
		t.Error("empty DNS name accepted")
	}
}

func BenchmarkSignX509SVID(b *testing.B) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(b, clock, nil)
	csr := makeCSR(b, newP256(b), testID, nil)
	b.ResetTimer()
	for b.Loop() {
		if _, err := ca.SignX509SVID(csr, testID, 0); err != nil {
			b.Fatal(err)
		}
	}
}
