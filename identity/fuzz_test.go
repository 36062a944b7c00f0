package identity

import (
	"testing"
)

// Seeds live in testdata/fuzz/<FuzzName>/ (valid and refused CSRs, bundles).

func FuzzValidateCSR(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ValidateCSR(data, testID)
		if err != nil {
			if csr != nil {
				t.Fatalf("CSR returned along with error %v", err)
			}
			return
		}
		if len(csr.URIs) != 1 || csr.URIs[0].String() != testID.String() {
			t.Fatalf("accepted a CSR with URIs %v, want exactly [%v]", csr.URIs, testID)
		}
		if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
			t.Fatalf("accepted a CSR with extra SANs")
		}
	})
}

func FuzzLoadFederatedBundle(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := LoadFederatedBundle(otherTD, data)
		if err != nil {
			return
		}
		if b.TrustDomain() != otherTD || b.Empty() {
			t.Fatalf("accepted a bundle for %v with %d roots and %d JWT keys", b.TrustDomain(), len(b.X509Authorities()), len(b.JWTAuthorities()))
		}
		// What was accepted must survive a round trip through the bundle format.
		data, err = b.Marshal()
		if err != nil {
			t.Fatalf("marshal accepted bundle: %v", err)
		}
		if _, err := LoadFederatedBundle(otherTD, data); err != nil {
			t.Fatalf("re-load marshaled bundle: %v", err)
		}
	})
}
