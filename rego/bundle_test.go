package rego

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testBundlePolicy = `package palisade.test

default allow := false

allow if input.user in data.palisade.users
`

func testBundleContents(users ...string) BundleContents {
	return BundleContents{
		Roots:   []string{"palisade"},
		Modules: map[string]string{"palisade/test.rego": testBundlePolicy},
		Data:    map[string]any{"palisade": map[string]any{"users": users, "limit": 3}},
	}
}

// newTestSigner makes a fresh P-256 key; pkcs8 picks the PEM form.
func newTestSigner(t testing.TB, keyID string, pkcs8 bool) *BundleSigner {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if pkcs8 {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	} else {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	}
	s, err := NewBundleSigner(keyID, pem.EncodeToMemory(block))
	if err != nil {
		t.Fatalf("NewBundleSigner: %v", err)
	}
	return s
}

func verifierFor(t testing.TB, signers ...*BundleSigner) *BundleVerifier {
	t.Helper()
	keys := map[string][]byte{}
	for _, s := range signers {
		keys[s.KeyID()] = s.PublicKeyPEM()
	}
	v, err := NewBundleVerifier(keys)
	if err != nil {
		t.Fatalf("NewBundleVerifier: %v", err)
	}
	return v
}

func mustBuild(t testing.TB, c BundleContents, s *BundleSigner) ([]byte, string) {
	t.Helper()
	tarball, rev, err := BuildBundle(c, s)
	if err != nil {
		t.Fatalf("BuildBundle: %v", err)
	}
	return tarball, rev
}

// bundleJSON compares data the way OPA sees it (numbers read back as json.Number).
func bundleJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tarFiles lists a bundle's files, in order.
func tarFiles(t testing.TB, tarball []byte) (names []string, files map[string][]byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files = map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		files[h.Name] = b
	}
}

// rewriteTar returns the tarball with one file's content replaced, as an
// attacker between palisaded and an agent could.
func rewriteTar(t testing.TB, tarball []byte, name string, edit func([]byte) []byte) []byte {
	t.Helper()
	names, files := tarFiles(t, tarball)
	if _, ok := files[name]; !ok {
		t.Fatalf("no %s in bundle (has %v)", name, names)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, n := range names {
		b := files[n]
		if n == name {
			b = edit(b)
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Typeflag: tar.TypeReg, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBuildBundleRoundTrip(t *testing.T) {
	for _, pkcs8 := range []bool{false, true} {
		signer := newTestSigner(t, "palisade", pkcs8)
		c := testBundleContents("alice", "bob")
		tarball, rev := mustBuild(t, c, signer)

		names, _ := tarFiles(t, tarball)
		want := []string{"/data.json", "/palisade/test.rego", "/.signatures.json", "/.manifest"}
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("tarball files (-want +got):\n%s", diff)
		}

		got, err := ReadBundle(tarball, verifierFor(t, signer))
		if err != nil {
			t.Fatalf("ReadBundle: %v", err)
		}
		if got.Revision != rev || len(rev) != 64 {
			t.Errorf("revision %q, BuildBundle said %q", got.Revision, rev)
		}
		if diff := cmp.Diff(c.Roots, got.Roots); diff != "" {
			t.Errorf("roots (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(c.Modules, got.Modules); diff != "" {
			t.Errorf("modules (-want +got):\n%s", diff)
		}
		if a, b := bundleJSON(t, c.Data), bundleJSON(t, got.Data); a != b {
			t.Errorf("data = %s, want %s", b, a)
		}
	}
}

func TestBuildBundleDeterministic(t *testing.T) {
	signer := newTestSigner(t, "palisade", true)
	c := testBundleContents("alice", "bob")
	c.Modules["palisade/other.rego"] = "package palisade.other\n\nx := 1\n"
	c.Modules["palisade/z/deep.rego"] = "package palisade.z\n\ny := 2\n"
	a, revA := mustBuild(t, c, signer)
	b, revB := mustBuild(t, copyBundleContents(c), signer)
	if !bytes.Equal(a, b) || revA != revB {
		t.Fatalf("two builds of the same contents differ: revisions %s, %s; bytes equal %v", revA, revB, bytes.Equal(a, b))
	}

	unsignedA, urevA := mustBuild(t, c, nil)
	unsignedB, urevB := mustBuild(t, c, nil)
	if !bytes.Equal(unsignedA, unsignedB) || urevA != urevB {
		t.Fatal("two unsigned builds of the same contents differ")
	}
	if urevA == revA {
		t.Error("signed and unsigned bundles (different bytes) share a revision")
	}

	other := testBundleContents("alice", "carol")
	if _, rev := mustBuild(t, other, signer); rev == revA {
		t.Error("different data, same revision")
	}
	moved := testBundleContents("alice", "bob")
	moved.Modules = map[string]string{"palisade/renamed.rego": testBundlePolicy}
	if _, rev := mustBuild(t, moved, signer); rev == revA {
		t.Error("different module path, same revision")
	}
	if _, rev := mustBuild(t, c, newTestSigner(t, "palisade", true)); rev == revA {
		t.Error("different signing key, same revision")
	}
}

func copyBundleContents(c BundleContents) BundleContents {
	out := BundleContents{Roots: append([]string(nil), c.Roots...), Modules: map[string]string{}}
	for k, v := range c.Modules {
		out.Modules[k] = v
	}
	var data map[string]any
	raw, _ := json.Marshal(c.Data)
	_ = json.Unmarshal(raw, &data)
	out.Data = data
	return out
}

func TestReadBundleRejects(t *testing.T) {
	signer := newTestSigner(t, "palisade", false)
	tarball, _ := mustBuild(t, testBundleContents("alice"), signer)
	unsigned, _ := mustBuild(t, testBundleContents("alice"), nil)
	v := verifierFor(t, signer)

	wrongKey := newTestSigner(t, "palisade", false) // same id, other key
	otherID := newTestSigner(t, "other", false)

	for name, tc := range map[string]struct {
		tarball []byte
		v       *BundleVerifier
		want    string
	}{
		"tampered data": {
			tarball: rewriteTar(t, tarball, "/data.json", func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"alice"`), []byte(`"mallory"`), 1)
			}),
			v: v, want: "data.json",
		},
		"tampered module": {
			tarball: rewriteTar(t, tarball, "/palisade/test.rego", func(b []byte) []byte {
				return append(b, []byte("\nallow := true\n")...)
			}),
			v: v, want: "test.rego",
		},
		"tampered manifest": {
			tarball: rewriteTar(t, tarball, "/.manifest", func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"palisade"`), []byte(`"palisade","system"`), 1)
			}),
			v: v, want: "manifest",
		},
		"wrong key":      {tarball: tarball, v: verifierFor(t, wrongKey), want: "verify"},
		"unknown key id": {tarball: tarball, v: verifierFor(t, otherID), want: "palisade"},
		"unsigned":       {tarball: unsigned, v: v, want: "signatures"},
		"not a tarball":  {tarball: []byte("hello"), v: v, want: ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadBundle(tc.tarball, tc.v)
			if err == nil {
				t.Fatal("ReadBundle accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}

	// A verifier holding both keys (a rotation) accepts either signer's bundles.
	rotating := verifierFor(t, signer, otherID)
	other, _ := mustBuild(t, testBundleContents("alice"), otherID)
	for _, b := range [][]byte{tarball, other} {
		if _, err := ReadBundle(b, rotating); err != nil {
			t.Errorf("rotation verifier: %v", err)
		}
	}
	// Without a verifier (trusted source), unsigned and signed bundles load.
	for _, b := range [][]byte{tarball, unsigned} {
		if _, err := ReadBundle(b, nil); err != nil {
			t.Errorf("ReadBundle(nil verifier): %v", err)
		}
	}
}

func TestBuildBundleRefusesWhatOPAWould(t *testing.T) {
	for name, tc := range map[string]struct {
		edit func(*BundleContents)
		want string
	}{
		"syntax error":      {func(c *BundleContents) { c.Modules["palisade/bad.rego"] = "package palisade.bad\n\nallow if {" }, "bad.rego"},
		"package off roots": {func(c *BundleContents) { c.Modules["x.rego"] = "package other\n\nx := 1\n" }, "roots"},
		"data off roots":    {func(c *BundleContents) { c.Data["other"] = 1 }, "roots"},
		"no roots":          {func(c *BundleContents) { c.Roots = nil }, "roots"},
		"overlapping roots": {func(c *BundleContents) { c.Roots = []string{"palisade", "palisade/x"} }, "overlap"},
		"not .rego":         {func(c *BundleContents) { c.Modules["palisade/a.txt"] = "package palisade\n" }, ".rego"},
		"dot dot":           {func(c *BundleContents) { c.Modules["../palisade/a.rego"] = "package palisade\n" }, ".."},
		"same path twice":   {func(c *BundleContents) { c.Modules["/palisade/test.rego"] = testBundlePolicy }, "two modules"},
		"rego v0":           {func(c *BundleContents) { c.Modules["palisade/v0.rego"] = "package palisade.v0\n\nallow { true }\n" }, "v0.rego"},
	} {
		t.Run(name, func(t *testing.T) {
			c := testBundleContents("alice")
			tc.edit(&c)
			_, _, err := BuildBundle(c, newTestSigner(t, "palisade", true))
			if err == nil {
				t.Fatal("BuildBundle accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestBundleKeysRejected(t *testing.T) {
	rsaPEM := []byte("-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n")
	if _, err := NewBundleSigner("k", rsaPEM); err == nil {
		t.Error("NewBundleSigner accepted garbage")
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(p384)
	if _, err := NewBundleSigner("k", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err == nil {
		t.Error("NewBundleSigner accepted a P-384 key for ES256")
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	if _, err := NewBundleVerifier(map[string][]byte{"k": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})}); err == nil {
		t.Error("NewBundleVerifier accepted a P-384 key for ES256")
	}
	s := newTestSigner(t, "k", true)
	if _, err := NewBundleSigner("", []byte(s.keyPEM)); err == nil {
		t.Error("NewBundleSigner accepted an empty key id")
	}
	if _, err := NewBundleVerifier(nil); err == nil {
		t.Error("NewBundleVerifier accepted no keys")
	}
}
