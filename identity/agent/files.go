package agent

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-mesh/palisade/identity/wellknown"
)

const (
	dataLink    = "..data"
	dataLinkTmp = "..data_tmp"
)

// dirLocks serialises WriteFiles per directory within the process.
var dirLocks sync.Map // cleaned dir -> *sync.Mutex

// WriteFiles writes cert-chain.pem (leaf first), key.pem (PKCS#8 "PRIVATE KEY",
// mode 0600) and root-cert.pem (the SVID's trust domain roots, then federated
// roots) into dir, atomically as Kubernetes does for ConfigMap volumes: the
// files go into a new timestamped subdirectory, a "..data" symlink is swapped
// to it by rename, and the three fixed names are symlinks through "..data". A
// reader that resolves "..data" once (grpc's file_watcher provider reloads all
// files together) sees one generation, never a cert with another's key. Older
// generation directories are removed after the swap.
func WriteFiles(dir string, svid *x509svid.SVID, bundles *spiffebundle.Set) error {
	if svid == nil || len(svid.Certificates) == 0 {
		return errors.New("agent: WriteFiles: no SVID")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		return fmt.Errorf("agent: WriteFiles: private key: %w", err)
	}
	var chain bytes.Buffer
	for _, c := range svid.Certificates {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	roots, err := rootsPEM(svid, bundles)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{wellknown.CertChainFile, chain.Bytes(), 0o644},
		{wellknown.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{wellknown.RootCertFile, roots, 0o644},
	}

	dir = filepath.Clean(dir)
	mu, _ := dirLocks.LoadOrStore(dir, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("agent: WriteFiles: %w", err)
	}
	gen, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return fmt.Errorf("agent: WriteFiles: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(gen)
		}
	}()
	// Readable by the workload's user; key.pem itself stays 0600.
	if err := os.Chmod(gen, 0o755); err != nil {
		return fmt.Errorf("agent: WriteFiles: %w", err)
	}
	for _, f := range files {
		if err := writeSynced(filepath.Join(gen, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("agent: WriteFiles: %w", err)
		}
	}
	if err := syncDir(gen); err != nil {
		return fmt.Errorf("agent: WriteFiles: %w", err)
	}

	// The swap: rename(2) of a symlink over "..data" is atomic.
	if err := replaceSymlink(dir, dataLink, dataLinkTmp, filepath.Base(gen)); err != nil {
		return fmt.Errorf("agent: WriteFiles: swap %s: %w", dataLink, err)
	}
	ok = true
	for _, f := range files {
		target := filepath.Join(dataLink, f.name)
		if cur, err := os.Readlink(filepath.Join(dir, f.name)); err == nil && cur == target {
			continue
		}
		if err := replaceSymlink(dir, f.name, "."+f.name+".tmp", target); err != nil {
			return fmt.Errorf("agent: WriteFiles: link %s: %w", f.name, err)
		}
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("agent: WriteFiles: %w", err)
	}
	return removeOldGenerations(dir, filepath.Base(gen))
}

// rootsPEM is the SVID's own trust domain roots first, so tools that read only
// the first certificate still get the local CA, then every federated root.
func rootsPEM(svid *x509svid.SVID, bundles *spiffebundle.Set) ([]byte, error) {
	td := svid.ID.TrustDomain()
	if bundles == nil {
		return nil, errors.New("agent: WriteFiles: no trust bundles")
	}
	own, ok := bundles.Get(td)
	if !ok || len(own.X509Authorities()) == 0 {
		return nil, fmt.Errorf("agent: WriteFiles: no X.509 roots for trust domain %q", td)
	}
	var out bytes.Buffer
	for _, c := range own.X509Authorities() {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	for _, b := range bundles.Bundles() {
		if b.TrustDomain() == td {
			continue
		}
		for _, c := range b.X509Authorities() {
			_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	return out.Bytes(), nil
}

func writeSynced(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // umask may have narrowed it
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// replaceSymlink points dir/name at target by renaming a fresh symlink over it.
func replaceSymlink(dir, name, tmpName, target string) error {
	tmp := filepath.Join(dir, tmpName)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removeOldGenerations deletes generation directories other than current; it
// only touches names of the form WriteFiles creates ("..<digit>...").
func removeOldGenerations(dir, current string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("agent: WriteFiles: %w", err)
	}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if n == current || !e.IsDir() || len(n) < 3 || n[:2] != ".." || n[2] < '0' || n[2] > '9' {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("agent: WriteFiles: removing old generations: %w", errors.Join(errs...))
	}
	return nil
}
