package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// pluggedFixture is an operator CA: a root, a second trusted root, and an
// intermediate (ca-cert) that signs.
type pluggedFixture struct {
	dir          string
	root, other  *x509.Certificate
	intermediate *x509.Certificate
	key          crypto.Signer
}

// writePlugged writes an Istio cacerts directory. cert-chain.pem follows Istio's
// habit of repeating ca-cert and the root.
func writePlugged(t *testing.T, key crypto.Signer, nb, na time.Time) pluggedFixture {
	t.Helper()
	rootKey, otherKey := newP256(t), newP256(t)
	f := pluggedFixture{dir: t.TempDir(), key: key}
	f.root = makeCACert(t, "Operator Root", rootKey, nil, nil, nb.Add(-time.Hour), na.Add(time.Hour))
	f.other = makeCACert(t, "Operator Next Root", otherKey, nil, nil, nb, na.Add(time.Hour))
	f.intermediate = makeCACert(t, "Operator Intermediate", key, f.root, rootKey, nb, na)

	var keyPEM []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	case *ecdsa.PrivateKey:
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: must(x509.MarshalECPrivateKey(k))})
	default:
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(k))})
	}
	files := map[string][]byte{
		"ca-cert.pem":    encodeCertPEM(f.intermediate),
		"ca-key.pem":     keyPEM,
		"root-cert.pem":  append(encodeCertPEM(f.root), encodeCertPEM(f.other)...),
		"cert-chain.pem": append(encodeCertPEM(f.intermediate), encodeCertPEM(f.root)...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(f.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestPluggedCA(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"ECDSA SEC1 key": newP256(t), "RSA PKCS1 key": rsaKey} {
		t.Run(name, func(t *testing.T) {
			now := time.Now()
			clock := newFakeClock(now)
			f := writePlugged(t, key, now.Add(-time.Hour), now.Add(30*time.Minute))
			ca, _ := newTestCA(t, clock, func(c *CAConfig) { c.PluggedCertDir = f.dir })

			roots := rootsOf(t, ca)
			if !slices.EqualFunc(roots, [][]byte{f.root.Raw, f.other.Raw}, bytes.Equal) {
				t.Errorf("bundle roots are not exactly root-cert.pem's %d roots (got %d)", 2, len(roots))
			}

			chain, err := ca.SignX509SVID(makeCSR(t, newP256(t), testID, nil), testID, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) != 2 || !chain[1].Equal(f.intermediate) {
				t.Fatalf("chain = %d certificates, want leaf and ca-cert only", len(chain))
			}
			checkSVIDLeaf(t, chain[0], testID)
			id, verified, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(now))
			if err != nil || id != testID {
				t.Fatalf("Verify = %v, %v", id, err)
			}
			if got := verified[0]; len(got) != 3 || !got[2].Equal(f.root) {
				t.Errorf("verified chain does not go leaf → ca-cert → root")
			}
			if !chain[0].NotAfter.Equal(f.intermediate.NotAfter) {
				t.Errorf("leaf NotAfter = %v, want clamped to ca-cert's %v", chain[0].NotAfter, f.intermediate.NotAfter)
			}

			// JWT keys stay self-managed.
			token, _, err := ca.MintJWTSVID(testID, []string{"db"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := jwtsvid.ParseAndValidate(token, ca.Bundle(), []string{"db"}); err != nil {
				t.Errorf("JWT with a plugged CA: %v", err)
			}
		})
	}
}

func TestPluggedCAErrors(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name   string
		break_ func(t *testing.T, f pluggedFixture)
		want   string
	}{
		{"mismatched key", func(t *testing.T, f pluggedFixture) {
			write(t, f.dir, "ca-key.pem", must(encodeECKeyPEM(newP256(t))))
		}, "ca-key.pem does not match the public key of ca-cert.pem"},
		{"missing key", func(t *testing.T, f pluggedFixture) {
			os.Remove(filepath.Join(f.dir, "ca-key.pem"))
		}, "ca-key.pem: no such file"},
		{"garbage key", func(t *testing.T, f pluggedFixture) {
			write(t, f.dir, "ca-key.pem", []byte("garbage"))
		}, "ca-key.pem: no PEM private key found"},
		{"certificate as key", func(t *testing.T, f pluggedFixture) {
			write(t, f.dir, "ca-key.pem", encodeCertPEM(f.root))
		}, `unsupported PEM block "CERTIFICATE"`},
		{"unrelated root", func(t *testing.T, f pluggedFixture) {
			write(t, f.dir, "root-cert.pem", encodeCertPEM(f.other))
		}, "ca-cert.pem does not chain to root-cert.pem"},
		{"leaf as ca-cert", func(t *testing.T, f pluggedFixture) {
			ca, _ := newTestCA(t, newFakeClock(now), nil)
			chain, err := ca.SignServerCert(f.key.Public(), testID, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			write(t, f.dir, "ca-cert.pem", encodeCertPEM(chain[0]))
		}, "not a CA certificate"},
		{"two ca-certs", func(t *testing.T, f pluggedFixture) {
			write(t, f.dir, "ca-cert.pem", append(encodeCertPEM(f.intermediate), encodeCertPEM(f.root)...))
		}, "want one certificate, got 2"},
		{"empty roots", func(t *testing.T, f pluggedFixture) {
			write(t, f.dir, "root-cert.pem", nil)
		}, "root-cert.pem: no PEM certificates found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writePlugged(t, newP256(t), now.Add(-time.Hour), now.Add(time.Hour))
			tt.break_(t, f)
			_, err := NewCA(CAConfig{TrustDomain: testTD, DataDir: t.TempDir(), PluggedCertDir: f.dir, Now: func() time.Time { return now }})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewCA error = %v, want one containing %q", err, tt.want)
			}
		})
	}

	t.Run("expired", func(t *testing.T) {
		f := writePlugged(t, newP256(t), now.Add(-2*time.Hour), now.Add(-time.Hour))
		_, err := NewCA(CAConfig{TrustDomain: testTD, DataDir: t.TempDir(), PluggedCertDir: f.dir, Now: func() time.Time { return now }})
		if err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("NewCA error = %v, want an expiry error", err)
		}
	})
}

func write(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPluggedCAExpiryWarning(t *testing.T) {
	t0 := time.Now()
	clock := newFakeClock(t0)
	f := writePlugged(t, newP256(t), t0, t0.Add(100*time.Hour))
	logger, logs := testLogger(t)
	ca, _ := newTestCA(t, clock, func(c *CAConfig) { c.PluggedCertDir = f.dir; c.Logger = logger })

	count := func() int { return strings.Count(logs.String(), "plugged CA certificate expires soon") }
	steps := []struct {
		at   time.Duration
		want int // warnings so far
	}{
		{70 * time.Hour, 0},                // 30% left
		{80 * time.Hour, 1},                // 20% left
		{80*time.Hour + 10*time.Minute, 1}, // rate-limited
		{81*time.Hour + time.Minute, 2},    // an hour later
	}
	for _, s := range steps {
		clock.Set(t0.Add(s.at))
		if err := ca.Tick(); err != nil {
			t.Fatal(err)
		}
		if got := count(); got != s.want {
			t.Errorf("at +%v: %d warnings, want %d", s.at, got, s.want)
		}
	}
}

// TestSwitchBetweenSelfManagedAndPlugged checks both migrations on one data
// directory: to a plugged CA (the old root stays trusted, so running workloads keep
// working, while JWT keys go on rotating without roots) and back (a self-managed CA
// whose current slot has no root makes one at once).
func TestSwitchBetweenSelfManagedAndPlugged(t *testing.T) {
	t0 := time.Now()
	clock := newFakeClock(t0)
	ca, cfg := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = 2 * time.Hour })
	selfRoot := rootsOf(t, ca)[0]
	seq := seqOf(t, ca)
	csr := makeCSR(t, newP256(t), testID, nil)
	hasRoot := func(roots [][]byte, root []byte) bool {
		return slices.ContainsFunc(roots, func(r []byte) bool { return bytes.Equal(r, root) })
	}

	f := writePlugged(t, newP256(t), t0.Add(-time.Hour), t0.Add(1000*time.Hour))
	cfg.PluggedCertDir = f.dir
	plugged, err := NewCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if roots := rootsOf(t, plugged); len(roots) != 3 || !hasRoot(roots, selfRoot) {
		t.Errorf("with a plugged CA the bundle must hold both plugged roots and the previous root, got %d roots", len(roots))
	}
	if seqOf(t, plugged) != seq+1 {
		t.Errorf("sequence = %d after the roots changed, want %d", seqOf(t, plugged), seq+1)
	}
	chain, err := plugged.SignX509SVID(csr, testID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(f.intermediate) {
		t.Error("the plugged CA does not sign")
	}
	// Rotate the JWT keys under the plugged CA: the new slots carry no root.
	for _, at := range []time.Duration{61 * time.Minute, 91 * time.Minute} {
		clock.Set(t0.Add(at))
		if err := plugged.Tick(); err != nil {
			t.Fatal(err)
		}
	}
	if roots, keys := rootsOf(t, plugged), plugged.Bundle().JWTAuthorities(); len(roots) != 3 || len(keys) != 2 {
		t.Errorf("after a JWT rotation under the plugged CA: %d roots, %d JWT keys; want 3, 2", len(roots), len(keys))
	}

	cfg.PluggedCertDir = ""
	back, err := NewCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	chain, err = back.SignX509SVID(csr, testID, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, verified, err := x509svid.Verify(chain, back.Bundle(), x509svid.WithTime(clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	signer := verified[0][1]
	if bytes.Equal(signer.Raw, selfRoot) || !slices.Equal(signer.Subject.Organization, []string{"Palisade"}) {
		t.Errorf("back to self-managed, SVIDs must chain to a fresh Palisade root, got %v", signer.Subject)
	}
	if roots := rootsOf(t, back); len(roots) != 2 || !hasRoot(roots, selfRoot) {
		t.Errorf("back to self-managed: %d roots, want the fresh one and the unexpired first one", len(roots))
	}
}
