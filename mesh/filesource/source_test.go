package filesource

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// timeout bounds every wait; the waits end as soon as what they wait for happens.
const timeout = 5 * time.Second

// logRecorder is a slog.Handler that keeps every record and lets a test wait for one.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
	added   chan struct{} // signalled after each record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	select {
	case h.added <- struct{}{}:
	default:
	}
	return nil
}

// mark returns a position in the log to wait from.
func (h *logRecorder) mark() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.records)
}

// matching returns the records since from that match.
func (h *logRecorder) matching(from int, match func(slog.Record) bool) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.records[from:] {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitFor waits for a record since from that matches.
func (h *logRecorder) waitFor(t *testing.T, from int, what string, match func(slog.Record) bool) slog.Record {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if rs := h.matching(from, match); len(rs) > 0 {
			return rs[0]
		}
		select {
		case <-h.added:
		case <-deadline:
			t.Fatalf("no log record for %s within %v", what, timeout)
		}
	}
}

func attrs(r slog.Record) map[string]string {
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	return m
}

// reloaded matches the record that ends every reload.
func reloaded(r slog.Record) bool { return r.Message == "config reloaded" }

type harness struct {
	dir   string
	src   *Source
	snaps chan *mesh.Snapshot
	logs  *logRecorder
	reg   *prometheus.Registry
}

// start runs a Source on dir until the test ends.
func start(t *testing.T, dir string) *harness {
	t.Helper()
	h := &harness{
		dir:   dir,
		snaps: make(chan *mesh.Snapshot, 100),
		logs:  &logRecorder{added: make(chan struct{}, 1)},
		reg:   prometheus.NewRegistry(),
	}
	h.src = New(Config{
		Dir:        dir,
		Logger:     slog.New(h.logs),
		Registerer: h.reg,
		Publish:    func(s *mesh.Snapshot) { h.snaps <- s },
		Debounce:   10 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancellation, want nil", err)
			}
		case <-time.After(timeout):
			t.Errorf("Run did not return within %v of cancellation", timeout)
		}
	})
	return h
}

// next waits for the next published snapshot and for the end of the reload that
// published it, so that what the test does next starts a new reload.
func (h *harness) next(t *testing.T) *mesh.Snapshot {
	t.Helper()
	var s *mesh.Snapshot
	select {
	case s = <-h.snaps:
	case <-time.After(timeout):
		t.Fatalf("no snapshot published within %v", timeout)
	}
	version := strconv.FormatUint(s.Version, 10)
	h.logs.waitFor(t, 0, "the end of the reload of version "+version, func(r slog.Record) bool {
		a := attrs(r)
		return reloaded(r) && a["changed"] == "true" && a["version"] == version
	})
	return s
}

// noneQueued checks that no snapshot was published that the test did not expect.
func (h *harness) noneQueued(t *testing.T) {
	t.Helper()
	select {
	case s := <-h.snaps:
		t.Fatalf("unexpected snapshot version %d", s.Version)
	default:
	}
}

func (h *harness) write(t *testing.T, files map[string]string) {
	t.Helper()
	writeFiles(t, h.dir, files)
}

func (h *harness) remove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(h.dir, name)); err != nil {
		t.Fatal(err)
	}
}

// timeoutOf returns the timeout of the snapshot's VirtualService ns/name, or "" if it
// has none.
func timeoutOf(s *mesh.Snapshot, ns, name string) string {
	for _, vs := range s.VirtualServices {
		if vs.Key.Namespace == ns && vs.Key.Name == name {
			return vs.Spec.Http[0].Timeout.AsDuration().String()
		}
	}
	return ""
}

func hasDiagnostic(diags []config.Diagnostic, sev config.Severity, k config.Key, fragment string) bool {
	for _, d := range diags {
		if d.Severity == sev && d.Object == k && strings.Contains(d.Message, fragment) {
			return true
		}
	}
	return false
}

const host = "reviews.shop.svc.cluster.local"

var (
	reviewsSE = key(config.KindServiceEntry, "shop", "reviews")
	reviewsVS = key(config.KindVirtualService, "shop", "reviews")
)

func TestRunFollowsChanges(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "2s"))})
	h := start(t, dir)

	// Readers on other goroutines, for the race detector.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = h.src.Current()
				_ = h.src.Diagnostics()
			}
		}
	})
	defer func() { close(stop); readers.Wait() }()

	s := h.next(t)
	if s.Version != 1 || len(s.Services) != 1 || timeoutOf(s, "shop", "reviews") != "2s" {
		t.Fatalf("first snapshot: version %d, %d services, timeout %q; want version 1, 1 service, 2s", s.Version, len(s.Services), timeoutOf(s, "shop", "reviews"))
	}
	if h.src.Current() != s {
		t.Error("Current is not the published snapshot")
	}

	h.write(t, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "3s"))})
	if s := h.next(t); s.Version != 2 || timeoutOf(s, "shop", "reviews") != "3s" {
		t.Fatalf("after an edit: version %d, timeout %q; want version 2, 3s", s.Version, timeoutOf(s, "shop", "reviews"))
	}

	// Same objects, other layout: nothing to publish.
	mark := h.logs.mark()
	h.write(t, map[string]string{"a.yaml": docs("# reordered\n", virtualService("shop", "reviews", host, "3000ms"), serviceEntry("shop", "reviews", host))})
	h.logs.waitFor(t, mark, "a reload without change", func(r slog.Record) bool { return reloaded(r) && attrs(r)["changed"] == "false" })
	h.noneQueued(t)

	// An editor's atomic save: write a temporary file, rename it over the old one.
	tmp := filepath.Join(dir, ".a.yaml.swp")
	if err := os.WriteFile(tmp, []byte(docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "4s"))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	if s := h.next(t); s.Version != 3 || timeoutOf(s, "shop", "reviews") != "4s" {
		t.Fatalf("after a rename: version %d, timeout %q; want version 3, 4s", s.Version, timeoutOf(s, "shop", "reviews"))
	}

	h.remove(t, "a.yaml")
	if s := h.next(t); s.Version != 4 || len(s.Services) != 0 || len(s.VirtualServices) != 0 {
		t.Fatalf("after deleting the file: version %d, %d services, %d virtual services; want version 4 and none", s.Version, len(s.Services), len(s.VirtualServices))
	}
}

func TestRunKeepsLastGoodVersion(t *testing.T) {
	dir := t.TempDir()
	good := docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "2s"))
	writeFiles(t, dir, map[string]string{"a.yaml": good, "b.yaml": destinationRule("shop", "reviews", host)})
	h := start(t, dir)
	if s := h.next(t); timeoutOf(s, "shop", "reviews") != "2s" {
		t.Fatalf("first snapshot has timeout %q, want 2s", timeoutOf(s, "shop", "reviews"))
	}

	// A broken field: the object keeps its last good version, nothing is published,
	// and the error is logged with its location.
	mark := h.logs.mark()
	h.write(t, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "soon"))})
	r := h.logs.waitFor(t, mark, "the invalid VirtualService", func(r slog.Record) bool { return r.Level == slog.LevelError })
	want := map[string]string{"file": "a.yaml", "doc": "1", "kind": "VirtualService", "namespace": "shop", "name": "reviews"}
	got := attrs(r)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("log attribute %s = %q, want %q (record %v)", k, got[k], v, got)
		}
	}
	if !strings.Contains(got["message"], "spec.http[0].timeout") {
		t.Errorf("logged message %q does not name spec.http[0].timeout", got["message"])
	}
	h.logs.waitFor(t, mark, "the end of the reload", reloaded)
	h.noneQueued(t)
	if v := h.src.Current().Version; v != 1 {
		t.Errorf("Current is version %d, want still 1", v)
	}
	diags := h.src.Diagnostics()
	if !hasDiagnostic(diags, config.SeverityError, reviewsVS, "spec.http[0].timeout") || !hasDiagnostic(diags, config.SeverityWarning, reviewsVS, "last valid version") {
		t.Errorf("diagnostics %v lack the error and the last-good warning for %v", diags, reviewsVS)
	}

	// Another change is published with the old version of the broken object.
	h.write(t, map[string]string{"b.yaml": destinationRule("shop", "reviews", "reviews")})
	s := h.next(t)
	if s.Version != 2 || timeoutOf(s, "shop", "reviews") != "2s" {
		t.Errorf("with a broken document: version %d, timeout %q; want version 2 and the last good 2s", s.Version, timeoutOf(s, "shop", "reviews"))
	}
	if !hasDiagnostic(s.Diagnostics, config.SeverityError, reviewsVS, "spec.http[0].timeout") || !hasDiagnostic(s.Diagnostics, config.SeverityWarning, reviewsVS, "last valid version") {
		t.Errorf("snapshot diagnostics %v lack the error and the last-good warning for %v", s.Diagnostics, reviewsVS)
	}

	// Broken YAML: no object can be named, so all of the file's objects stay.
	mark = h.logs.mark()
	h.write(t, map[string]string{"a.yaml": "kind: [\n"})
	h.logs.waitFor(t, mark, "the end of the reload", reloaded)
	h.noneQueued(t)
	diags = h.src.Diagnostics()
	if !hasDiagnostic(diags, config.SeverityWarning, reviewsSE, "last valid version") || !hasDiagnostic(diags, config.SeverityWarning, reviewsVS, "last valid version") {
		t.Errorf("diagnostics %v do not say that both objects of a.yaml are kept", diags)
	}

	// Fixed: the new version is served and the problems are gone.
	h.write(t, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "5s"))})
	s = h.next(t)
	if s.Version != 3 || timeoutOf(s, "shop", "reviews") != "5s" {
		t.Errorf("after the fix: version %d, timeout %q; want version 3, 5s", s.Version, timeoutOf(s, "shop", "reviews"))
	}
	for _, d := range s.Diagnostics {
		if d.Object == reviewsVS || d.Object == reviewsSE {
			t.Errorf("diagnostic left after the fix: %v", d)
		}
	}

	// Broken, then deleted: deleting is a change, the objects go.
	mark = h.logs.mark()
	h.write(t, map[string]string{"a.yaml": "kind: [\n"})
	h.logs.waitFor(t, mark, "the end of the reload", reloaded)
	h.remove(t, "a.yaml")
	if s := h.next(t); len(s.Services) != 0 || len(s.VirtualServices) != 0 {
		t.Errorf("after deleting the broken file: %d services, %d virtual services; want none", len(s.Services), len(s.VirtualServices))
	}
}

func TestRunWatchesNewDirectories(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir)
	if s := h.next(t); s.Version != 1 || len(s.Services) != 0 {
		t.Fatalf("first snapshot of an empty directory: version %d, %d services", s.Version, len(s.Services))
	}

	// Created together with its parent: found by the rescan after the watch is added.
	h.write(t, map[string]string{"sub/deeper/a.yaml": serviceEntry("shop", "reviews", host)})
	if s := h.next(t); len(s.Services) != 1 {
		t.Fatalf("after creating sub/deeper/a.yaml: %d services, want 1", len(s.Services))
	}
	// Now watched: a change inside is seen.
	h.write(t, map[string]string{"sub/deeper/b.yaml": destinationRule("shop", "reviews", host)})
	if s := h.next(t); len(s.DestinationRules) != 1 {
		t.Fatalf("after creating sub/deeper/b.yaml: %d destination rules, want 1", len(s.DestinationRules))
	}
	// A removed directory takes its objects along.
	if err := os.RemoveAll(filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	if s := h.next(t); len(s.Services) != 0 || len(s.DestinationRules) != 0 {
		t.Fatalf("after removing sub: %d services, %d destination rules; want none", len(s.Services), len(s.DestinationRules))
	}
}

// TestRunConfigMapUpdate updates files the way kubelet updates a ConfigMap volume: a
// new hidden directory, then an atomic swap of the ..data symbolic link.
func TestRunConfigMapUpdate(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"..v1/a.yaml":     docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "2s")),
		"..v1/sub/b.yaml": destinationRule("shop", "reviews", host),
	})
	for name, target := range map[string]string{"..data": "..v1", "a.yaml": "..data/a.yaml", "sub": "..data/sub"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	h := start(t, dir)
	if s := h.next(t); timeoutOf(s, "shop", "reviews") != "2s" || len(s.DestinationRules) != 1 {
		t.Fatalf("first snapshot: timeout %q, %d destination rules; want 2s and 1", timeoutOf(s, "shop", "reviews"), len(s.DestinationRules))
	}

	update := func(version, timeout, subsetHost string) {
		t.Helper()
		h.write(t, map[string]string{
			".." + version + "/a.yaml":     docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, timeout)),
			".." + version + "/sub/b.yaml": destinationRule("shop", "reviews", subsetHost),
		})
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(".."+version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	update("v2", "3s", host)
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	if s := h.next(t); timeoutOf(s, "shop", "reviews") != "3s" {
		t.Fatalf("after the swap: timeout %q, want 3s", timeoutOf(s, "shop", "reviews"))
	}
	// sub now leads to another directory; a change there is seen too.
	update("v3", "3s", "reviews")
	if s := h.next(t); len(s.DestinationRules) != 1 || s.DestinationRules[0].Spec.Host != "reviews" {
		t.Fatalf("after the second swap: destination rules %v, want the one for host reviews", s.DestinationRules)
	}
}

func TestRunLogsDiagnosticsOnce(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "broken", host, "soon"))})
	h := start(t, dir)
	h.next(t)
	isBroken := func(r slog.Record) bool { return r.Level == slog.LevelError && attrs(r)["name"] == "broken" }
	h.logs.waitFor(t, 0, "the invalid VirtualService", isBroken)

	h.write(t, map[string]string{"b.yaml": destinationRule("shop", "reviews", host)})
	h.next(t)
	if n := len(h.logs.matching(0, isBroken)); n != 1 {
		t.Errorf("the unchanged error was logged %d times, want once", n)
	}
}

// metricValue returns the value of a gauge or counter in reg with the given labels.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matchLabels(m, labels) {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

func matchLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

func TestRunMetrics(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "soon"))})
	h := start(t, dir)
	h.next(t)
	if v := metricValue(t, h.reg, "palisade_config_invalid_documents"); v != 1 {
		t.Errorf("invalid documents = %v, want 1", v)
	}
	if v := metricValue(t, h.reg, "palisade_config_objects", "kind", "ServiceEntry"); v != 1 {
		t.Errorf("ServiceEntry objects = %v, want 1", v)
	}
	if v := metricValue(t, h.reg, "palisade_config_reloads_total", "result", "error"); v < 1 {
		t.Errorf("failed reloads = %v, want at least 1", v)
	}
	if v := metricValue(t, h.reg, "palisade_config_last_reload_timestamp_seconds"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last reload timestamp = %v, want about now", v)
	}

	h.write(t, map[string]string{"a.yaml": docs(serviceEntry("shop", "reviews", host), virtualService("shop", "reviews", host, "1s"))})
	h.next(t)
	if v := metricValue(t, h.reg, "palisade_config_invalid_documents"); v != 0 {
		t.Errorf("invalid documents after the fix = %v, want 0", v)
	}
	if v := metricValue(t, h.reg, "palisade_config_objects", "kind", "VirtualService"); v != 1 {
		t.Errorf("VirtualService objects = %v, want 1", v)
	}
	if v := metricValue(t, h.reg, "palisade_config_reloads_total", "result", "ok"); v < 1 {
		t.Errorf("successful reloads = %v, want at least 1", v)
	}

	h.remove(t, "a.yaml")
	h.next(t)
	if v := metricValue(t, h.reg, "palisade_config_objects", "kind", "VirtualService"); v != 0 {
		t.Errorf("VirtualService objects after deleting the file = %v, want 0", v)
	}
}

func TestRunUnreadableDirectory(t *testing.T) {
	src := New(Config{Dir: filepath.Join(t.TempDir(), "missing")})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := src.Run(ctx); err == nil {
		t.Error("Run on a missing directory returned nil, want an error")
	}
	if src.Current() != nil {
		t.Error("Current is not nil after a failed start")
	}
}
