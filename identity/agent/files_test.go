package agent

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-mesh/palisade/identity/wellknown"
)

func readPair(t *testing.T, dir string) (tls.Certificate, error) {
	t.Helper()
	cert, err := os.ReadFile(filepath.Join(dir, wellknown.CertChainFile))
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := os.ReadFile(filepath.Join(dir, wellknown.KeyFile))
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(cert, key)
}

func checkFiles(t *testing.T, dir string, svid *x509svid.SVID, roots ...*x509.Certificate) string {
	t.Helper()
	pair, err := readPair(t, dir)
	if err != nil {
		t.Fatalf("cert and key: %v", err)
	}
	if !sameCert(pair.Leaf, svid.Certificates[0]) {
		t.Fatalf("cert-chain.pem leaf is serial %s, want %s", pair.Leaf.SerialNumber, svid.Certificates[0].SerialNumber)
	}
	fi, err := os.Stat(filepath.Join(dir, wellknown.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem mode %v", fi.Mode().Perm())
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, wellknown.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	got := pemCerts(t, rootPEM)
	if len(got) != len(roots) {
		t.Fatalf("root-cert.pem has %d certs, want %d", len(got), len(roots))
	}
	for i := range roots {
		if !sameCert(got[i], roots[i]) {
			t.Fatalf("root %d is %s", i, got[i].Subject)
		}
	}
	for _, name := range []string{wellknown.CertChainFile, wellknown.KeyFile, wellknown.RootCertFile} {
		if target, err := os.Readlink(filepath.Join(dir, name)); err != nil || target != filepath.Join(dataLink, name) {
			t.Fatalf("%s -> %q (%v), want through %s", name, target, err, dataLink)
		}
	}
	gen, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil {
		t.Fatal(err)
	}
	return gen
}

func TestWriteFiles(t *testing.T) {
	ca, fed := newTestCA(t, tdMain), newTestCA(t, fedTD)
	dir := filepath.Join(t.TempDir(), "certs")
	bundles := spiffebundleSet(t, ca, fed)

	s1 := ca.issue(t, idA)
	if err := WriteFiles(dir, s1, bundles); err != nil {
		t.Fatal(err)
	}
	gen1 := checkFiles(t, dir, s1, ca.cert, fed.cert) // own roots first

	s2 := ca.issue(t, idA)
	if err := WriteFiles(dir, s2, bundles); err != nil {
		t.Fatal(err)
	}
	gen2 := checkFiles(t, dir, s2, ca.cert, fed.cert)
	if gen1 == gen2 {
		t.Fatal("second write reused the generation directory")
	}
	if _, err := os.Stat(filepath.Join(dir, gen1)); !os.IsNotExist(err) {
		t.Fatalf("old generation %s still there: %v", gen1, err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(entries) != 5 { // 3 links, ..data, one generation
		t.Fatalf("directory holds %v", names)
	}

	// A regular file left by an older, non-atomic writer is replaced.
	if err := os.Remove(filepath.Join(dir, wellknown.RootCertFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, wellknown.RootCertFile), []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(dir, s2, spiffebundleSet(t, ca)); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, dir, s2, ca.cert)

	// Errors: no bundle for the SVID's trust domain, no SVID.
	if err := WriteFiles(dir, s2, spiffebundleSet(t, fed)); err == nil || !strings.Contains(err.Error(), "example.org") {
		t.Fatalf("missing own bundle: %v", err)
	}
	if err := WriteFiles(dir, nil, bundles); err == nil {
		t.Fatal("nil SVID accepted")
	}
	checkFiles(t, dir, s2, ca.cert) // failed writes changed nothing
}

// A reader that resolves ..data once always reads a cert and key of the same
// generation while writes rotate underneath it.
func TestWriteFilesAtomicSwap(t *testing.T) {
	ca := newTestCA(t, tdMain)
	dir := t.TempDir()
	bundles := spiffebundleSet(t, ca)
	if err := WriteFiles(dir, ca.issue(t, idA), bundles); err != nil {
		t.Fatal(err)
	}
	svids := make([]*x509svid.SVID, 30)
	for i := range svids {
		svids[i] = ca.issue(t, idA)
	}
	var done atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !done.Load() {
			gen, err := os.Readlink(filepath.Join(dir, dataLink))
			if err != nil {
				continue
			}
			_, err = readPair(t, filepath.Join(dir, gen))
			switch {
			case err == nil:
				reads.Add(1)
			case os.IsNotExist(err): // generation already removed: read again
			default:
				t.Errorf("torn read: %v", err)
			}
		}
	}()
	for _, s := range svids {
		if err := WriteFiles(dir, s, bundles); err != nil {
			t.Fatal(err)
		}
	}
	done.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("reader never completed a read")
	}
	checkFiles(t, dir, svids[len(svids)-1], ca.cert)
}
