package filesource

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/mesh/config"
)

func serviceEntry(ns, name, host string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: %s, namespace: %s}
spec:
  hosts: [%s]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
`, name, ns, host)
}

// virtualService routes host to itself with the given timeout; a timeout that is not
// a duration makes the document invalid.
func virtualService(ns, name, host, timeout string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: %s}
spec:
  hosts: [%s]
  http:
  - route: [{destination: {host: %[3]s}}]
    timeout: %s
`, name, ns, host, timeout)
}

func destinationRule(ns, name, host string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: %s, namespace: %s}
spec:
  host: %s
`, name, ns, host)
}

func docs(ds ...string) string { return strings.Join(ds, "---\n") }

// writeFiles writes files (relative path → content) under dir, creating directories.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func key(kind config.Kind, ns, name string) config.Key {
	return config.Key{Kind: kind, Namespace: ns, Name: name}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	const host = "reviews.shop.svc.cluster.local"
	writeFiles(t, dir, map[string]string{
		"a.yaml":            docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "2s")),
		"sub/b.yml":         destinationRule("shop", "reviews", host),
		"sub/deeper/c.yaml": docs(destinationRule("shop", "ratings", "ratings"), virtualService("shop", "broken", host, "soon")),
		// Not read: other extensions, hidden files and directories.
		"README.md":         virtualService("shop", "readme", host, "1s"),
		"notes.txt":         "kind: [",
		".hidden.yaml":      "kind: [",
		".git/config.yaml":  "kind: [",
		"sub/.swp/x.yaml":   "kind: [",
		"sub/deeper/d.yaml": "", // empty files are fine
	})

	objs, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		key config.Key
		src config.Source
	}{
		{key(config.KindServiceEntry, "shop", "reviews"), config.Source{File: "a.yaml", Index: 0}},
		{key(config.KindVirtualService, "shop", "reviews"), config.Source{File: "a.yaml", Index: 1}},
		{key(config.KindDestinationRule, "shop", "reviews"), config.Source{File: "sub/b.yml", Index: 0}},
		{key(config.KindDestinationRule, "shop", "ratings"), config.Source{File: "sub/deeper/c.yaml", Index: 0}},
	}
	if len(objs) != len(want) {
		t.Fatalf("got %d objects, want %d: %v", len(objs), len(want), objs)
	}
	for i, w := range want {
		if objs[i].Key != w.key || objs[i].Source != w.src {
			t.Errorf("object %d is %v from %v, want %v from %v", i, objs[i].Key, objs[i].Source, w.key, w.src)
		}
	}
	if vs := objs[1].Spec.(*networking.VirtualService); vs.Http[0].Timeout.AsDuration().String() != "2s" {
		t.Errorf("timeout = %v, want 2s", vs.Http[0].Timeout.AsDuration())
	}

	if len(diags) != 1 {
		t.Fatalf("got diagnostics %v, want one", diags)
	}
	d := diags[0]
	if d.Severity != config.SeverityError ||
		d.Source != (config.Source{File: "sub/deeper/c.yaml", Index: 1}) ||
		d.Object != key(config.KindVirtualService, "shop", "broken") ||
		!strings.Contains(d.Message, "spec.http[0].timeout") {
		t.Errorf("diagnostic = %v, want an error for sub/deeper/c.yaml[doc 1] VirtualService shop/broken naming spec.http[0].timeout", d)
	}
}

func TestLoadOrder(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"b.yaml":   destinationRule("ns", "b", "b"),
		"a/z.yaml": destinationRule("ns", "az", "az"),
		"a.yaml":   destinationRule("ns", "a", "a"),
		"a-b.yml":  destinationRule("ns", "ab", "ab"),
	})
	objs, _, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, o := range objs {
		files = append(files, o.Source.File)
	}
	// Lexical order of the paths, not the order of a depth-first walk.
	if got, want := strings.Join(files, " "), "a-b.yml a.yaml a/z.yaml b.yaml"; got != want {
		t.Errorf("files read in order %q, want %q", got, want)
	}
}

func TestLoadDuplicates(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml": docs(destinationRule("ns", "x", "first"), destinationRule("ns", "x", "second")),
		"b.yaml": docs(destinationRule("ns", "z", "z"), destinationRule("ns", "x", "third")),
		// Same name, other kind or namespace: not duplicates.
		"c.yaml": docs(destinationRule("other", "x", "x"), virtualService("ns", "x", "x", "1s")),
	})
	objs, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	x := key(config.KindDestinationRule, "ns", "x")
	var found []string
	for _, o := range objs {
		if o.Key == x {
			found = append(found, o.Spec.(*networking.DestinationRule).Host)
		}
	}
	if len(objs) != 4 || len(found) != 1 || found[0] != "first" {
		t.Errorf("got %d objects with %v for %v, want 4 objects and only the first definition", len(objs), found, x)
	}
	wantAt := []config.Source{{File: "a.yaml", Index: 1}, {File: "b.yaml", Index: 1}}
	if len(diags) != len(wantAt) {
		t.Fatalf("got diagnostics %v, want %d", diags, len(wantAt))
	}
	for i, d := range diags {
		if d.Severity != config.SeverityError || d.Object != x || d.Source != wantAt[i] || !strings.Contains(d.Message, "a.yaml[doc 0]") {
			t.Errorf("diagnostic %q, want an error at %v naming %v and a.yaml[doc 0]", d, wantAt[i], x)
		}
	}
}

// TestLoadConfigMapVolume reads the layout kubelet writes for a ConfigMap: the files
// live in a hidden timestamped directory reached through ..data, and visible symbolic
// links point into it. A link loop and a dangling link must not hurt.
func TestLoadConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"..2026_01_01_00_00_00.1/a.yaml":     destinationRule("ns", "a", "a"),
		"..2026_01_01_00_00_00.1/sub/b.yaml": destinationRule("ns", "b", "b"),
	})
	links := map[string]string{
		"..data":       "..2026_01_01_00_00_00.1",
		"a.yaml":       "..data/a.yaml",
		"sub":          "..data/sub",
		"self":         ".",
		"sub-again":    "sub",
		"missing.yaml": "nowhere.yaml",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(dir, filepath.Join(dir, "..2026_01_01_00_00_00.1/sub/root")); err != nil {
		t.Fatal(err)
	}

	objs, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.Source.File+":"+o.Name)
	}
	if strings.Join(got, " ") != "a.yaml:a sub/b.yaml:b" {
		t.Errorf("read %v, want a.yaml:a and sub/b.yaml:b once each", got)
	}
	if len(diags) != 1 || diags[0].Severity != config.SeverityWarning || diags[0].Source.File != "missing.yaml" {
		t.Errorf("got diagnostics %v, want one warning for the dangling missing.yaml", diags)
	}
}

func TestLoadFileProblems(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"ok.yaml": destinationRule("ns", "ok", "ok")})
	// A sparse file: over the limit without writing 16 MiB.
	big, err := os.Create(filepath.Join(dir, "big.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := big.Truncate(MaxFileBytes + 1); err != nil {
		t.Fatal(err)
	}
	big.Close()

	objs, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Errorf("got %d objects, want the one of ok.yaml", len(objs))
	}
	if len(diags) != 1 || diags[0].Source.File != "big.yaml" || diags[0].Severity != config.SeverityError || !strings.Contains(diags[0].Message, "limit") {
		t.Errorf("got diagnostics %v, want an error about big.yaml's size", diags)
	}
}

func TestLoadUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads files whatever their permissions")
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"secret.yaml":     destinationRule("ns", "a", "a"),
		"locked/b.yaml":   destinationRule("ns", "b", "b"),
		"readable/c.yaml": destinationRule("ns", "c", "c"),
	})
	for _, name := range []string{"secret.yaml", "locked"} {
		p := filepath.Join(dir, name)
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(p, 0o755) })
	}
	objs, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Name != "c" {
		t.Errorf("got objects %v, want only readable/c.yaml's", objs)
	}
	var files []string
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			files = append(files, d.Source.File)
		}
	}
	if strings.Join(files, " ") != "locked/ secret.yaml" {
		t.Errorf("got diagnostics %v, want errors for locked/ and secret.yaml", diags)
	}
}

func TestLoadBadDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"file.yaml": ""})
	for _, d := range []string{filepath.Join(dir, "missing"), filepath.Join(dir, "file.yaml")} {
		if _, _, err := Load(d); err == nil {
			t.Errorf("Load(%s) succeeded, want an error", d)
		}
	}
}
