package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"time"
	"unicode"
)

// Leaves are not made with x509.CreateCertificate: it verifies every signature it
// makes against the signer's public key, and for an ECDSA P-256 CA that check costs
// as much as the CSR's proof-of-possession check (~90µs of each issuance on two
// cores) to confirm a signature our own in-memory key has just made. leafProfile
// builds the same DER itself and signs it once. Its output is byte-identical to
// what CreateCertificate makes from leafRequest.template (leaf_test.go checks that
// for every key type it handles); keep the two in step when a leaf changes.

// leafRequest is what differs between the leaves one signer issues.
type leafRequest struct {
	serial              *big.Int
	notBefore, notAfter time.Time
	pub                 crypto.PublicKey
	uri                 *url.URL
	dnsNames            []string
	ipAddresses         []net.IP // palisaded's own certificate, reached by address
}

// template is the x509.CreateCertificate template of the leaf.
func (r leafRequest) template() *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          r.serial,
		Subject:               leafSubjectName,
		URIs:                  []*url.URL{r.uri},
		DNSNames:              r.dnsNames,
		IPAddresses:           r.ipAddresses,
		NotBefore:             r.notBefore,
		NotAfter:              r.notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// issue signs the leaf r describes, with the builder when the signer has a profile
// and with x509.CreateCertificate otherwise.
func (s x509Signer) issue(r leafRequest) ([]byte, error) {
	if s.leaf != nil {
		return s.leaf.certificate(s.key, r)
	}
	return x509.CreateCertificate(rand.Reader, r.template(), s.cert, r.pub, s.key)
}

var (
	leafSubjectName = pkix.Name{Organization: []string{"Palisade"}}
	leafSubject     = mustMarshal(leafSubjectName.ToRDNSequence())

	oidECDSAWithSHA256   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidSHA256WithRSA     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidExtKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtAuthorityKey   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidServerAuth        = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth        = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}

	// leafFixedExts are the extensions every leaf has, in CreateCertificate's order:
	// keyUsage (critical) digitalSignature, extKeyUsage serverAuth and clientAuth,
	// basicConstraints (critical) CA:false. A leaf gets no subjectKeyIdentifier:
	// CreateCertificate generates one for CAs only.
	leafFixedExts = slices.Concat(
		mustMarshal(pkix.Extension{Id: oidExtKeyUsage, Critical: true,
			// Bit 0 (digitalSignature) of a one-bit BIT STRING.
			Value: mustMarshal(asn1.BitString{Bytes: []byte{0x80}, BitLength: 1})}),
		mustMarshal(pkix.Extension{Id: oidExtExtKeyUsage,
			Value: mustMarshal([]asn1.ObjectIdentifier{oidServerAuth, oidClientAuth})}),
		mustMarshal(pkix.Extension{Id: oidBasicConstraints, Critical: true,
			Value: mustMarshal(struct{}{})}), // CA:false and no path length: an empty SEQUENCE
	)
)

// leafProfile holds the DER of what every leaf of one signing certificate shares,
// so that an issuance only encodes what differs.
type leafProfile struct {
	hash   crypto.Hash
	sigAlg []byte // AlgorithmIdentifier, in the TBS and next to the signature
	issuer []byte // the signing certificate's subject
	exts   []byte // the extensions before subjectAltName, without the SEQUENCE header
}

// newLeafProfile returns the profile for leaves that cert and its key sign, or nil
// when the builder does not handle the key: ECDSA P-256 and P-384 and RSA only.
// Callers then use x509.CreateCertificate, which also reports a key that does not
// match cert.
func newLeafProfile(cert *x509.Certificate, key crypto.Signer) *leafProfile {
	p := &leafProfile{issuer: cert.RawSubject}
	var alg pkix.AlgorithmIdentifier
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		if !pub.Equal(cert.PublicKey) {
			return nil
		}
		switch pub.Curve {
		case elliptic.P256():
			p.hash, alg.Algorithm = crypto.SHA256, oidECDSAWithSHA256
		case elliptic.P384():
			p.hash, alg.Algorithm = crypto.SHA384, oidECDSAWithSHA384
		default:
			return nil
		}
	case *rsa.PublicKey:
		if !pub.Equal(cert.PublicKey) {
			return nil
		}
		p.hash, alg = crypto.SHA256, pkix.AlgorithmIdentifier{Algorithm: oidSHA256WithRSA, Parameters: asn1.NullRawValue}
	default:
		return nil
	}
	p.sigAlg = mustMarshal(alg)
	p.exts = leafFixedExts
	// As CreateCertificate: the issuer's key identifier, unless the leaf's subject
	// equals the issuer's (it would then treat the leaf as self-signed).
	if len(cert.SubjectKeyId) > 0 && !bytes.Equal(cert.RawSubject, leafSubject) {
		aki := mustMarshal(struct {
			ID []byte `asn1:"optional,tag:0"`
		}{cert.SubjectKeyId})
		p.exts = slices.Concat(p.exts, mustMarshal(pkix.Extension{Id: oidExtAuthorityKey, Value: aki}))
	}
	return p
}

// DER tags of what certificate encodes per issuance.
const (
	tagInteger         = 0x02
	tagBitString       = 0x03
	tagOctetString     = 0x04
	tagUTCTime         = 0x17
	tagGeneralizedTime = 0x18
	tagSequence        = 0x30
	tagExtensions      = 0xa3 // [3] EXPLICIT, in TBSCertificate
	tagDNSName         = 0x82 // [2] IMPLICIT IA5String, in GeneralName
	tagURI             = 0x86 // [6] IMPLICIT IA5String, in GeneralName
	tagIPAddress       = 0x87 // [7] IMPLICIT OCTET STRING, in GeneralName
)

var (
	// tbsVersion is the TBSCertificate's version field: [0] EXPLICIT INTEGER 2 (v3).
	tbsVersion = []byte{0xa0, 0x03, tagInteger, 0x01, 0x02}
	oidSANDER  = mustMarshal(oidExtSubjectAltName)
)

// certificate returns the DER of the leaf r describes, signed by key. It encodes
// by hand what varies per leaf: encoding/asn1's reflection cost as much as a
// fifth of the builder's time.
func (p *leafProfile) certificate(key crypto.Signer, r leafRequest) ([]byte, error) {
	if r.serial.Sign() < 0 {
		return nil, errors.New("serial number must be positive")
	}
	spki, err := x509.MarshalPKIXPublicKey(r.pub)
	if err != nil {
		return nil, err
	}
	notBefore, err := derTime(r.notBefore)
	if err != nil {
		return nil, err
	}
	notAfter, err := derTime(r.notAfter)
	if err != nil {
		return nil, err
	}
	san, err := derSAN(r.dnsNames, r.ipAddresses, r.uri)
	if err != nil {
		return nil, err
	}
	// A positive INTEGER is its big-endian bytes, with a leading zero when the top
	// bit is set (or when it is zero).
	serial := r.serial.Bytes()
	if len(serial) == 0 || serial[0]&0x80 != 0 {
		serial = append([]byte{0}, serial...)
	}
	sanExt := appendDER(nil, tagSequence, oidSANDER, appendDER(nil, tagOctetString, san))
	tbs := appendDER(nil, tagSequence,
		tbsVersion,
		appendDER(nil, tagInteger, serial),
		p.sigAlg,
		p.issuer,
		appendDER(nil, tagSequence, notBefore, notAfter),
		leafSubject,
		spki,
		appendDER(nil, tagExtensions, appendDER(nil, tagSequence, p.exts, sanExt)),
	)
	h := p.hash.New()
	h.Write(tbs)
	// No check of the signature, unlike CreateCertificate (see the top of this file).
	// crypto/rsa checks its own CRT result already.
	sig, err := key.Sign(rand.Reader, h.Sum(nil), p.hash)
	if err != nil {
		return nil, err
	}
	// The signature is a BIT STRING with no unused bits.
	return appendDER(nil, tagSequence, tbs, p.sigAlg, appendDER(nil, tagBitString, []byte{0}, sig)), nil
}

// appendDER appends to b one DER element: tag, definite length, and the content
// given in parts.
func appendDER(b []byte, tag byte, content ...[]byte) []byte {
	n := 0
	for _, c := range content {
		n += len(c)
	}
	b = append(b, tag)
	switch {
	case n < 0x80:
		b = append(b, byte(n))
	case n < 0x100:
		b = append(b, 0x81, byte(n))
	case n < 0x10000:
		b = append(b, 0x82, byte(n>>8), byte(n))
	default: // certificates stay far below 16 MiB
		b = append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	for _, c := range content {
		b = append(b, c...)
	}
	return b
}

// derTime encodes a certificate validity time as RFC 5280 (and encoding/asn1)
// do: UTCTime through 2049, GeneralizedTime from 2050, to the second, in UTC.
func derTime(t time.Time) ([]byte, error) {
	t = t.UTC()
	switch year := t.Year(); {
	case year >= 1950 && year < 2050:
		return appendDER(nil, tagUTCTime, t.AppendFormat(nil, "060102150405Z")), nil
	case year >= 0 && year <= 9999:
		return appendDER(nil, tagGeneralizedTime, t.AppendFormat(nil, "20060102150405Z")), nil
	}
	return nil, fmt.Errorf("time %v cannot be encoded in a certificate", t)
}

// derSAN encodes a subjectAltName value as CreateCertificate does: DNS names
// first, then IP addresses, then the URI; names are IA5Strings.
func derSAN(dnsNames []string, ips []net.IP, uri *url.URL) ([]byte, error) {
	var names [][]byte
	add := func(tag byte, s string) error {
		for _, c := range s {
			if c > unicode.MaxASCII {
				return fmt.Errorf("%q cannot be encoded as an IA5String", s)
			}
		}
		names = append(names, appendDER(nil, tag, []byte(s)))
		return nil
	}
	for _, name := range dnsNames {
		if err := add(tagDNSName, name); err != nil {
			return nil, err
		}
	}
	for _, ip := range ips {
		if ip4 := ip.To4(); ip4 != nil {
			ip = ip4
		}
		names = append(names, appendDER(nil, tagIPAddress, ip))
	}
	if err := add(tagURI, uri.String()); err != nil {
		return nil, err
	}
	return appendDER(nil, tagSequence, names...), nil
}

func mustMarshal(v any) []byte {
	der, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return der
}
