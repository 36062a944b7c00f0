package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var otherTD = spiffeid.RequireTrustDomainFromString("other.org")

// foreignBundleJSON returns another CA's bundle in SPIFFE bundle format.
func foreignBundleJSON(t *testing.T) ([]byte, *spiffebundle.Bundle) {
	t.Helper()
	foreign, _ := newTestCA(t, newFakeClock(time.Now()), func(c *CAConfig) { c.TrustDomain = otherTD })
	b := foreign.Bundle()
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data, b
}

func TestLoadFederatedBundle(t *testing.T) {
	jsonData, foreign := foreignBundleJSON(t)
	root := foreign.X509Authorities()[0]
	second := makeCACert(t, "second", newP256(t), nil, nil, time.Now(), time.Now().Add(time.Hour))
	twoPEM := append(encodeCertPEM(root), encodeCertPEM(second)...)

	tests := []struct {
		name      string
		td        spiffeid.TrustDomain
		data      []byte
		wantRoots int
		wantJWT   int
		wantErr   string
	}{
		{name: "SPIFFE bundle JSON", td: otherTD, data: jsonData, wantRoots: 1, wantJWT: 1},
		{name: "JSON with leading space", td: otherTD, data: append([]byte("\n  "), jsonData...), wantRoots: 1, wantJWT: 1},
		{name: "PEM certificates", td: otherTD, data: twoPEM, wantRoots: 2},
		{name: "PEM with openssl text", td: otherTD, data: append([]byte("subject=CN = second\n"), twoPEM...), wantRoots: 2},
		{name: "JSON without keys", td: otherTD, data: []byte(`{"spiffe_refresh_hint": 60}`), wantErr: "no authorities"},
		{name: "JSON with empty keys", td: otherTD, data: []byte(`{"keys": []}`), wantErr: "no X.509 or JWT authorities"},
		{name: "broken JSON", td: otherTD, data: []byte(`{"keys": [`), wantErr: "unable to parse JWKS"},
		{name: "x509-svid entry without certificate", td: otherTD, data: []byte(`{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-256","x":"","y":""}]}`), wantErr: "federated bundle for other.org"},
		{name: "private key PEM", td: otherTD, data: must(encodeECKeyPEM(newP256(t))), wantErr: `unexpected PEM block "PRIVATE KEY"`},
		{name: "garbage", td: otherTD, data: []byte("hello"), wantErr: "neither SPIFFE bundle JSON nor PEM certificates"},
		{name: "empty", td: otherTD, data: []byte(" \n"), wantErr: "empty"},
		{name: "no trust domain", data: jsonData, wantErr: "trust domain is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := LoadFederatedBundle(tt.td, tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.TrustDomain() != tt.td || len(b.X509Authorities()) != tt.wantRoots || len(b.JWTAuthorities()) != tt.wantJWT {
				t.Errorf("bundle for %v with %d roots and %d JWT keys; want %v, %d, %d",
					b.TrustDomain(), len(b.X509Authorities()), len(b.JWTAuthorities()), tt.td, tt.wantRoots, tt.wantJWT)
			}
		})
	}
}

func TestFederatedBundles(t *testing.T) {
	jsonData, _ := foreignBundleJSON(t)
	other, err := LoadFederatedBundle(otherTD, jsonData)
	if err != nil {
		t.Fatal(err)
	}
	third := spiffebundle.New(spiffeid.RequireTrustDomainFromString("aaa.org"))
	ca, _ := newTestCA(t, newFakeClock(time.Now()), func(c *CAConfig) { c.Federated = []*spiffebundle.Bundle{other, third} })

	// The caller's later changes must not reach the CA.
	other.SetX509Authorities(nil)
	got := ca.FederatedBundles()
	if len(got) != 2 || got[0].TrustDomain().Name() != "aaa.org" || got[1].TrustDomain() != otherTD {
		t.Fatalf("FederatedBundles = %d bundles, want aaa.org then other.org", len(got))
	}
	if len(got[1].X509Authorities()) != 1 {
		t.Error("a change to the configured bundle reached the CA")
	}
	got[1].SetX509Authorities(nil)
	if len(ca.FederatedBundles()[1].X509Authorities()) != 1 {
		t.Error("a change to a returned bundle reached the CA")
	}
}

func TestBundleIsACopy(t *testing.T) {
	ca, _ := newTestCA(t, newFakeClock(time.Now()), nil)
	b := ca.Bundle()
	if hint, ok := b.RefreshHint(); !ok || hint != bundleRefreshHint {
		t.Errorf("refresh hint = %v, %v; want %v", hint, ok, bundleRefreshHint)
	}
	b.SetX509Authorities(nil)
	b.SetSequenceNumber(99)
	if len(ca.Bundle().X509Authorities()) != 1 || seqOf(t, ca) != 1 {
		t.Error("changing a returned bundle changed the CA's")
	}
}

// WriteRoots publishes exactly the bundle's roots, readable by agents of other users.
func TestWriteRoots(t *testing.T) {
	ca, _ := newTestCA(t, newFakeClock(time.Now()), nil)
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := ca.WriteRoots(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	got, err := parseCertsPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	want := ca.Bundle().X509Authorities()
	if len(got) != len(want) || !got[0].Equal(want[0]) {
		t.Fatalf("wrote %d roots, want the bundle's %d", len(got), len(want))
	}
}
