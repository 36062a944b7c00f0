package rego

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/util"
)

// BundleContents is what a policy bundle carries, in the form palisaded builds
// it and the agent's engine consumes it.
type BundleContents struct {
	// Roots are the data paths the bundle owns (OPA refuses modules and data
	// outside them, and other bundles inside them); palisaded uses ["palisade"].
	Roots []string
	// Modules maps a path inside the bundle ("palisade/authz.rego") to Rego v1
	// source. The path names the file only; the package clause places the rules.
	Modules map[string]string
	// Data is the base document the bundle holds (data.json), rooted at data:
	// {"palisade": {...}}. Read back, numbers are json.Number.
	Data map[string]any
}

// BundleSnapshot is a bundle as read and verified: what an agent activates.
type BundleSnapshot struct {
	BundleContents
	// Revision is the manifest's revision, the content hash BuildBundle made.
	Revision string
}

// BuildBundle makes an OPA bundle (a gzipped tarball with .manifest, the
// modules, data.json and, given a signer, .signatures.json) that a stock OPA
// and ReadBundle load. The revision is a hash of everything that determines the
// bytes (roots, modules, data, the signer's key), and with a given OPA release
// the bytes follow from those alone (RFC 6979 signatures, no timestamps):
// building the same contents again, on any replica or after a restart, gives
// the same bytes and revision, so the revision can serve as a strong ETag. A bundle that OPA would refuse
// (a module that does not parse, data or packages outside the roots) is an
// error here rather than on every agent.
func BuildBundle(c BundleContents, signer *BundleSigner) (tarball []byte, revision string, err error) {
	b, revision, err := bundleFor(c, signer)
	if err != nil {
		return nil, "", err
	}
	if signer != nil {
		sc := bundle.NewSigningConfig(signer.keyPEM, BundleSigningAlgorithm, "").WithPlugin(rfc6979SignerID)
		if err := b.GenerateSignature(sc, signer.keyID, true); err != nil {
			return nil, "", fmt.Errorf("bundle: signing: %w", err)
		}
		// The token is a plain ES256 JWT: let verifiers use OPA's default
		// verifier rather than look for a plugin named after our signer.
		b.Signatures.Plugin = ""
	}
	var buf bytes.Buffer
	// Raw module text, not reformatted: the signature covers these bytes, and
	// the agent gets back exactly what palisaded generated.
	if err := bundle.NewWriter(&buf).UseModulePath(true).DisableFormat(true).Write(b); err != nil {
		return nil, "", fmt.Errorf("bundle: writing: %w", err)
	}
	var v *BundleVerifier
	if signer != nil {
		v = signer.verifier()
	}
	if _, err := ReadBundle(buf.Bytes(), v); err != nil {
		return nil, "", fmt.Errorf("bundle: OPA would not load it: %w", err)
	}
	return buf.Bytes(), revision, nil
}

// bundleFor normalises c into OPA's Bundle (modules sorted by path, data as
// parsed JSON, roots without slashes) and computes its revision.
func bundleFor(c BundleContents, signer *BundleSigner) (bundle.Bundle, string, error) {
	if len(c.Roots) == 0 {
		return bundle.Bundle{}, "", errors.New("bundle: no roots")
	}
	roots := make([]string, len(c.Roots))
	for i, r := range c.Roots {
		roots[i] = strings.Trim(r, "/")
	}

	data := map[string]any{}
	dataJSON := []byte("{}")
	if c.Data != nil {
		// Through JSON and back: the signature hashes the value as OPA will
		// parse it from data.json, not as the caller's Go types.
		raw, err := json.Marshal(c.Data)
		if err != nil {
			return bundle.Bundle{}, "", fmt.Errorf("bundle: data: %w", err)
		}
		if err := util.UnmarshalJSON(raw, &data); err != nil {
			return bundle.Bundle{}, "", fmt.Errorf("bundle: data: %w", err)
		}
		if dataJSON, err = json.Marshal(data); err != nil {
			return bundle.Bundle{}, "", fmt.Errorf("bundle: data: %w", err)
		}
	}

	h := sha256.New()
	field := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	field([]byte("palisade-opa-bundle/v1"))
	field(binary.BigEndian.AppendUint64(nil, uint64(len(roots))))
	for _, r := range roots {
		field([]byte(r))
	}

	var modules []bundle.ModuleFile
	for p, text := range c.Modules {
		clean, err := bundleModulePath(p)
		if err != nil {
			return bundle.Bundle{}, "", err
		}
		modules = append(modules, bundle.ModuleFile{URL: clean, Path: clean, Raw: []byte(text)})
	}
	slices.SortFunc(modules, func(a, b bundle.ModuleFile) int { return strings.Compare(a.Path, b.Path) })
	for i, m := range modules {
		if i > 0 && m.Path == modules[i-1].Path {
			return bundle.Bundle{}, "", fmt.Errorf("bundle: two modules at %s", m.Path)
		}
		field([]byte(m.Path))
		field(m.Raw)
	}
	field(dataJSON)
	if signer != nil {
		field([]byte(signer.keyID))
		field(signer.publicDER)
	}
	revision := hex.EncodeToString(h.Sum(nil))

	m := bundle.Manifest{Revision: revision, Roots: &roots}
	m.SetRegoVersion(ast.RegoV1)
	return bundle.Bundle{Manifest: m, Modules: modules, Data: data}, revision, nil
}

// bundleModulePath is the path a module gets in the tarball: absolute, clean,
// ending in .rego (OPA loads only those as policy).
func bundleModulePath(p string) (string, error) {
	clean := path.Clean("/" + p)
	if clean == "/" || strings.Contains(p, "\\") || !strings.HasSuffix(clean, bundle.RegoExt) {
		return "", fmt.Errorf("bundle: module path %q: want a relative path ending in %s", p, bundle.RegoExt)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == ".." {
			return "", fmt.Errorf("bundle: module path %q: no .. allowed", p)
		}
	}
	return clean, nil
}

// ReadBundle loads a bundle tarball the way a stock OPA does, verifying its
// signature against v. A nil v skips verification and accepts unsigned
// bundles: for trusted sources only.
func ReadBundle(tarball []byte, v *BundleVerifier) (BundleSnapshot, error) {
	return readBundle(bytes.NewReader(tarball), v, bundle.DefaultSizeLimitBytes)
}

func readBundle(r io.Reader, v *BundleVerifier, sizeLimit int64) (BundleSnapshot, error) {
	reader := bundle.NewReader(r).
		WithRegoVersion(ast.RegoV1).
		WithSizeLimitBytes(sizeLimit)
	if v == nil {
		reader = reader.WithSkipBundleVerification(true)
	} else {
		reader = reader.WithBundleVerificationConfig(v.opaConfig())
	}
	b, err := reader.Read()
	if err != nil {
		return BundleSnapshot{}, err
	}
	if b.Type() != bundle.SnapshotBundleType {
		return BundleSnapshot{}, fmt.Errorf("bundle: a %s bundle, want a snapshot", b.Type())
	}
	s := BundleSnapshot{
		BundleContents: BundleContents{Modules: make(map[string]string, len(b.Modules)), Data: b.Data},
		Revision:       b.Manifest.Revision,
	}
	if b.Manifest.Roots != nil {
		s.Roots = slices.Clone(*b.Manifest.Roots)
	}
	if s.Data == nil {
		s.Data = map[string]any{}
	}
	for _, m := range b.Modules {
		s.Modules[strings.TrimPrefix(m.Path, "/")] = string(m.Raw)
	}
	return s, nil
}
