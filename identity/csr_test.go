package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestValidateCSR(t *testing.T) {
	key := newP256(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	basicConstraints := func(isCA bool) pkix.Extension {
		value, err := asn1.Marshal(struct {
			IsCA bool `asn1:"optional"`
		}{isCA})
		if err != nil {
			t.Fatal(err)
		}
		return pkix.Extension{Id: oidBasicConstraints, Critical: true, Value: value}
	}
	other := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/db")
	valid := makeCSR(t, key, testID, nil)
	badSignature := append([]byte(nil), valid...)
	badSignature[len(badSignature)-1] ^= 0xff

	tests := []struct {
		name    string
		der     []byte
		want    spiffeid.ID
		wantErr error
		wantMsg string
	}{
		{name: "valid", der: valid, want: testID},
		{name: "valid with subject and non-CA constraint", want: testID, der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) {
			r.Subject = pkix.Name{CommonName: "web"}
			r.ExtraExtensions = []pkix.Extension{basicConstraints(false)}
		})},
		{name: "other identity", der: makeCSR(t, key, other, nil), want: testID, wantErr: ErrIdentityMismatch, wantMsg: "caller may only have"},
		{name: "other trust domain", want: testID, wantErr: ErrIdentityMismatch, wantMsg: "spiffe://evil.org",
			der: makeCSR(t, key, spiffeid.RequireFromString("spiffe://evil.org/ns/default/sa/web"), nil)},
		{name: "no identity to compare", der: valid, wantErr: ErrIdentityMismatch, wantMsg: "no SPIFFE ID"},
		{name: "extra DNS SAN", want: testID, wantErr: ErrInvalidCSR, wantMsg: "DNS SANs are not allowed",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) { r.DNSNames = []string{"web.example.org"} })},
		{name: "IP SAN", want: testID, wantErr: ErrInvalidCSR, wantMsg: "IP SANs are not allowed",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} })},
		{name: "email SAN", want: testID, wantErr: ErrInvalidCSR, wantMsg: "email SANs are not allowed",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@example.org"} })},
		{name: "two URI SANs", want: testID, wantErr: ErrInvalidCSR, wantMsg: "exactly one URI SAN, got 2",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) { r.URIs = append(r.URIs, other.URL()) })},
		{name: "no URI SAN", want: testID, wantErr: ErrInvalidCSR, wantMsg: "exactly one URI SAN, got 0",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) { r.URIs = nil })},
		{name: "non-SPIFFE URI", want: testID, wantErr: ErrInvalidCSR, wantMsg: "not a SPIFFE ID",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) {
				r.URIs = []*url.URL{{Scheme: "https", Host: "example.org", Path: "/ns/default/sa/web"}}
			})},
		{name: "SPIFFE URI with query", want: testID, wantErr: ErrInvalidCSR, wantMsg: "not a SPIFFE ID",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) {
				u := testID.URL()
				u.RawQuery = "x=1"
				r.URIs = []*url.URL{u}
			})},
		{name: "CA requested", want: testID, wantErr: ErrInvalidCSR, wantMsg: "CA=true",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) { r.ExtraExtensions = []pkix.Extension{basicConstraints(true)} })},
		{name: "malformed basic constraints", want: testID, wantErr: ErrInvalidCSR, wantMsg: "malformed basic constraints",
			der: makeCSR(t, key, testID, func(r *x509.CertificateRequest) {
				r.ExtraExtensions = []pkix.Extension{{Id: oidBasicConstraints, Value: []byte{0x01}}}
			})},
		{name: "RSA key", der: makeCSR(t, rsaKey, testID, nil), want: testID, wantErr: ErrInvalidCSR, wantMsg: "must be ECDSA P-256, got RSA 2048"},
		{name: "P-384 key", der: makeCSR(t, p384, testID, nil), want: testID, wantErr: ErrInvalidCSR, wantMsg: "got ECDSA on P-384"},
		{name: "garbage", der: []byte("not a CSR"), want: testID, wantErr: ErrInvalidCSR, wantMsg: "invalid CSR: not a DER-encoded PKCS #10 request"},
		{name: "empty", der: nil, want: testID, wantErr: ErrInvalidCSR},
		{name: "trailing data", der: append(append([]byte(nil), valid...), 0), want: testID, wantErr: ErrInvalidCSR},
		{name: "bad signature", der: badSignature, want: testID, wantErr: ErrInvalidCSR, wantMsg: "signature does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ValidateCSR(tt.der, tt.want)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ValidateCSR: %v", err)
				}
				if len(csr.URIs) != 1 || csr.URIs[0].String() != tt.want.String() {
					t.Errorf("URIs = %v, want [%v]", csr.URIs, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want errors.Is %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			if csr != nil {
				t.Error("refused CSR returned along with the error")
			}
		})
	}
}
