package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestLeafProfileMatchesCreateCertificate issues the same leaf with the builder and
// with x509.CreateCertificate, for every CA key type the builder handles, and wants
// the same TBSCertificate byte for byte (and, as RSA PKCS #1 v1.5 signatures are
// deterministic, the same certificate for RSA).
func TestLeafProfileMatchesCreateCertificate(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caKeys := []struct {
		name string
		key  crypto.Signer
		alg  x509.SignatureAlgorithm
	}{
		{"P-256", newP256(t), x509.ECDSAWithSHA256},
		{"P-384", p384, x509.ECDSAWithSHA384},
		{"RSA-2048", rsaKey, x509.SHA256WithRSA},
	}
	caNotBefore := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	caNotAfter := time.Date(2060, 1, 1, 0, 0, 0, 0, time.UTC)
	now := time.Now()
	validities := []struct {
		name     string
		nb, na   time.Time
		wantTags [2]int // UTCTime or GeneralizedTime
	}{
		{"now", now.Add(-clockSkew), now.Add(time.Hour), [2]int{asn1.TagUTCTime, asn1.TagUTCTime}},
		{"sub-second, not UTC", time.Date(2031, 6, 30, 23, 59, 59, 999999999, time.FixedZone("X", 5*3600+1800)),
			time.Date(2031, 7, 1, 12, 0, 0, 1, time.FixedZone("Y", -7*3600)), [2]int{asn1.TagUTCTime, asn1.TagUTCTime}},
		{"last UTCTime second to 2050", time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC),
			time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC), [2]int{asn1.TagUTCTime, asn1.TagGeneralizedTime}},
		{"after 2050", time.Date(2051, 3, 4, 5, 6, 7, 0, time.UTC),
			time.Date(2051, 3, 5, 5, 6, 7, 0, time.UTC), [2]int{asn1.TagGeneralizedTime, asn1.TagGeneralizedTime}},
	}
	sans := []struct {
		dns []string
		ips []net.IP
	}{
		{},
		{dns: []string{"palisaded.palisade-system.svc", "localhost"}},
		{dns: []string{"localhost"}, ips: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}},
	}
	// Serials whose DER needs no padding, a leading zero byte (top bit set), and
	// the largest randomSerial makes; subtests take turns.
	serials := []*big.Int{big.NewInt(1), new(big.Int).Lsh(big.NewInt(1), 127), serialLimit}
	var subtests int

	for _, ck := range caKeys {
		// A CA whose subject differs from the leaves' gets an authority key
		// identifier in them; one whose subject is the leaves' own does not, as
		// CreateCertificate then takes the leaf for self-signed.
		issuers := map[string]*x509.Certificate{
			"root":                     makeCACert(t, "Leaf Builder CA", ck.key, nil, nil, caNotBefore, caNotAfter),
			"issuer named like leaves": makeCACertNamed(t, leafSubjectName, ck.key, caNotBefore, caNotAfter),
		}
		for issuerName, caCert := range issuers {
			p := newLeafProfile(caCert, ck.key)
			if p == nil {
				t.Fatalf("%s: no leaf profile for a %s CA", issuerName, ck.name)
			}
			for _, v := range validities {
				for _, san := range sans {
					name := fmt.Sprintf("%s/%s/%s/%d DNS names %d IPs", ck.name, issuerName, v.name, len(san.dns), len(san.ips))
					serial := serials[subtests%len(serials)]
					subtests++
					t.Run(name, func(t *testing.T) {
						req := leafRequest{
							serial:      serial,
							notBefore:   v.nb,
							notAfter:    v.na,
							pub:         newP256(t).Public(),
							uri:         testID.URL(),
							dnsNames:    san.dns,
							ipAddresses: san.ips,
						}
						wantDER, err := x509.CreateCertificate(rand.Reader, req.template(), caCert, req.pub, ck.key)
						if err != nil {
							t.Fatal(err)
						}
						gotDER, err := p.certificate(ck.key, req)
						if err != nil {
							t.Fatal(err)
						}
						want := must(x509.ParseCertificate(wantDER))
						got, err := x509.ParseCertificate(gotDER)
						if err != nil {
							t.Fatalf("parse the builder's certificate: %v", err)
						}

						compareLeaves(t, got, want)
						if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
							t.Errorf("TBSCertificate differs from CreateCertificate's:\n got %x\nwant %x", got.RawTBSCertificate, want.RawTBSCertificate)
						}
						if _, ok := ck.key.(*rsa.PrivateKey); ok && !bytes.Equal(gotDER, wantDER) {
							t.Error("RSA certificate differs from CreateCertificate's")
						}

						// Checks that do not rely on CreateCertificate.
						if got.SignatureAlgorithm != ck.alg {
							t.Errorf("SignatureAlgorithm = %v, want %v", got.SignatureAlgorithm, ck.alg)
						}
						wantAKI := caCert.SubjectKeyId // CreateCertificate gives every CA certificate one
						if issuerName == "issuer named like leaves" {
							wantAKI = nil
						}
						if !bytes.Equal(got.AuthorityKeyId, wantAKI) {
							t.Errorf("AuthorityKeyId = %x, want %x", got.AuthorityKeyId, wantAKI)
						}
						if got.SubjectKeyId != nil {
							t.Errorf("SubjectKeyId = %x, want none on a leaf", got.SubjectKeyId)
						}
						if !got.NotBefore.Equal(v.nb.Truncate(time.Second)) || !got.NotAfter.Equal(v.na.Truncate(time.Second)) {
							t.Errorf("validity = [%v, %v], want [%v, %v] to the second", got.NotBefore, got.NotAfter, v.nb, v.na)
						}
						if tags := validityTags(t, got.RawTBSCertificate); tags != v.wantTags {
							t.Errorf("validity time tags = %v, want %v (UTCTime is %d, GeneralizedTime %d)", tags, v.wantTags, asn1.TagUTCTime, asn1.TagGeneralizedTime)
						}
						if !slices.Equal(got.DNSNames, san.dns) {
							t.Errorf("DNSNames = %q, want %q", got.DNSNames, san.dns)
						}
						if !slices.EqualFunc(got.IPAddresses, san.ips, net.IP.Equal) {
							t.Errorf("IPAddresses = %v, want %v", got.IPAddresses, san.ips)
						}
						if len(san.ips) == 0 { // IPs are only for palisaded's own certificate
							checkSVIDLeaf(t, got, testID)
						}
						if err := got.CheckSignatureFrom(caCert); err != nil {
							t.Errorf("CheckSignatureFrom(CA): %v", err)
						}
						bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{caCert})
						id, _, err := x509svid.Verify([]*x509.Certificate{got}, bundle, x509svid.WithTime(v.nb.Add(time.Second)))
						if err != nil || id != testID {
							t.Errorf("x509svid.Verify = %v, %v; want %v", id, err, testID)
						}
					})
				}
			}
		}
	}
}

// compareLeaves reports the differences between two leaves in what SVIDs rely on.
func compareLeaves(t *testing.T, got, want *x509.Certificate) {
	t.Helper()
	type extID struct {
		oid      string
		critical bool
	}
	exts := func(c *x509.Certificate) []extID {
		var ids []extID
		for _, e := range c.Extensions {
			ids = append(ids, extID{e.Id.String(), e.Critical})
		}
		return ids
	}
	uris := func(c *x509.Certificate) []string {
		var s []string
		for _, u := range c.URIs {
			s = append(s, u.String())
		}
		return s
	}
	checks := []struct {
		field     string
		same      bool
		got, want any
	}{
		{"Version", got.Version == want.Version, got.Version, want.Version},
		{"SerialNumber", got.SerialNumber.Cmp(want.SerialNumber) == 0, got.SerialNumber, want.SerialNumber},
		{"Issuer", bytes.Equal(got.RawIssuer, want.RawIssuer), got.Issuer, want.Issuer},
		{"Subject", bytes.Equal(got.RawSubject, want.RawSubject), got.Subject, want.Subject},
		{"NotBefore", got.NotBefore.Equal(want.NotBefore), got.NotBefore, want.NotBefore},
		{"NotAfter", got.NotAfter.Equal(want.NotAfter), got.NotAfter, want.NotAfter},
		{"KeyUsage", got.KeyUsage == want.KeyUsage, got.KeyUsage, want.KeyUsage},
		{"ExtKeyUsage", slices.Equal(got.ExtKeyUsage, want.ExtKeyUsage), got.ExtKeyUsage, want.ExtKeyUsage},
		{"BasicConstraintsValid", got.BasicConstraintsValid == want.BasicConstraintsValid, got.BasicConstraintsValid, want.BasicConstraintsValid},
		{"IsCA", got.IsCA == want.IsCA, got.IsCA, want.IsCA},
		{"MaxPathLen", got.MaxPathLen == want.MaxPathLen, got.MaxPathLen, want.MaxPathLen},
		{"URIs", slices.Equal(uris(got), uris(want)), uris(got), uris(want)},
		{"DNSNames", slices.Equal(got.DNSNames, want.DNSNames), got.DNSNames, want.DNSNames},
		{"AuthorityKeyId", bytes.Equal(got.AuthorityKeyId, want.AuthorityKeyId), got.AuthorityKeyId, want.AuthorityKeyId},
		{"SubjectKeyId", bytes.Equal(got.SubjectKeyId, want.SubjectKeyId), got.SubjectKeyId, want.SubjectKeyId},
		{"PublicKey", bytes.Equal(got.RawSubjectPublicKeyInfo, want.RawSubjectPublicKeyInfo), got.PublicKey, want.PublicKey},
		{"SignatureAlgorithm", got.SignatureAlgorithm == want.SignatureAlgorithm, got.SignatureAlgorithm, want.SignatureAlgorithm},
		{"Extensions (OID, critical)", slices.Equal(exts(got), exts(want)), exts(got), exts(want)},
	}
	for _, c := range checks {
		if !c.same {
			t.Errorf("%s = %v, CreateCertificate made %v", c.field, c.got, c.want)
		}
	}
}

// validityTags returns the ASN.1 tags of the NotBefore and NotAfter times in tbs.
func validityTags(t *testing.T, tbs []byte) [2]int {
	t.Helper()
	var parsed struct {
		Version            asn1.RawValue `asn1:"optional,explicit,tag:0"`
		SerialNumber       asn1.RawValue
		SignatureAlgorithm asn1.RawValue
		Issuer             asn1.RawValue
		Validity           struct{ NotBefore, NotAfter asn1.RawValue }
		// The rest is ignored: encoding/asn1 accepts a longer SEQUENCE.
	}
	if _, err := asn1.Unmarshal(tbs, &parsed); err != nil {
		t.Fatalf("parse TBSCertificate: %v", err)
	}
	return [2]int{parsed.Validity.NotBefore.Tag, parsed.Validity.NotAfter.Tag}
}

// makeCACertNamed is a self-signed CA certificate with the given subject.
func makeCACertNamed(t *testing.T, subject pkix.Name, key crypto.Signer, nb, na time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          must(randomSerial()),
		Subject:               subject,
		NotBefore:             nb,
		NotAfter:              na,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	return must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))))
}

func TestNewLeafProfileFallsBack(t *testing.T) {
	nb, na := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	for name, tt := range map[string]struct {
		cert *x509.Certificate
		key  crypto.Signer
	}{
		"Ed25519":        {makeCACert(t, "Ed25519 CA", edKey, nil, nil, nb, na), edKey},
		"P-521":          {makeCACert(t, "P-521 CA", p521, nil, nil, nb, na), p521},
		"mismatched key": {makeCACert(t, "CA", key, nil, nil, nb, na), newP256(t)},
	} {
		if p := newLeafProfile(tt.cert, tt.key); p != nil {
			t.Errorf("%s: got a leaf profile, want CreateCertificate to sign", name)
		}
	}
}

// TestCASignersUseLeafBuilder guards against the builder being silently bypassed:
// the self-managed root, new or loaded from disk, and plugged ECDSA and RSA keys
// all sign with it; other keys still sign, with CreateCertificate.
func TestCASignersUseLeafBuilder(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, cfg := newTestCA(t, clock, nil)
	if ca.x509Signer().leaf == nil {
		t.Error("new self-managed root has no leaf profile")
	}
	again, err := NewCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.x509Signer().leaf == nil {
		t.Error("self-managed root loaded from disk has no leaf profile")
	}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name        string
		key         crypto.Signer
		wantBuilder bool
	}{
		{"P-256", newP256(t), true},
		{"P-384", p384, true},
		{"RSA", rsaKey, true},
		{"Ed25519", edKey, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			now := clock.Now()
			f := writePlugged(t, tt.key, now.Add(-time.Hour), now.Add(time.Hour))
			ca, _ := newTestCA(t, clock, func(c *CAConfig) { c.PluggedCertDir = f.dir })
			if got := ca.x509Signer().leaf != nil; got != tt.wantBuilder {
				t.Errorf("signs with the builder: %v, want %v", got, tt.wantBuilder)
			}
			chain, err := ca.SignX509SVID(makeCSR(t, newP256(t), testID, nil), testID, 0)
			if err != nil {
				t.Fatal(err)
			}
			checkSVIDLeaf(t, chain[0], testID)
			if _, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(now)); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// BenchmarkIssueLeaf compares the builder with x509.CreateCertificate for a P-256
// CA, without the CSR check SignX509SVID also does.
func BenchmarkIssueLeaf(b *testing.B) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(b, clock, nil)
	now := clock.Now()
	req := leafRequest{
		serial:    must(randomSerial()),
		notBefore: now.Add(-clockSkew),
		notAfter:  now.Add(time.Hour),
		pub:       newP256(b).Public(),
		uri:       testID.URL(),
	}
	builder := ca.x509Signer()
	fallback := builder
	fallback.leaf = nil
	for _, bb := range []struct {
		name string
		s    x509Signer
	}{{"builder", builder}, {"CreateCertificate", fallback}} {
		s := bb.s
		b.Run(bb.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.issue(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
