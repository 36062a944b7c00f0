// Package filesource is the YAML-directory config source: it reads Istio networking
// objects (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule) from the
// *.yaml and *.yml files under a directory, and publishes a new mesh.Snapshot whenever
// the set of objects they define changes.
//
// Load reads a directory once (palisadectl analyze uses it). A Source watches the
// directory, its subdirectories and the directories that appear later, and reloads
// all of it after a burst of changes, so that editors that replace files, `mv` of a
// finished file and the symbolic-link swap of a Kubernetes ConfigMap volume are all
// seen as one change.
//
// # Keep last good
//
// A mistake in one file must not take down what it configured. So on every reload an
// object that was served before and is missing from the new load keeps being served,
// in its last valid version, when
//
//   - an error diagnostic of the load names it: its document no longer decodes or
//     validates (an error in a spec field, an unsupported apiVersion, a duplicate); or
//   - the file it came from has an error that names no served object, which means the
//     error lost track of which object the document held: broken YAML, a missing kind
//     or name, a name that is invalid, or a file that cannot be read or is too large
//     (or a directory that cannot be read, for the files in it).
//
// It stays until the document is fixed; the snapshot's diagnostics carry the error
// and a warning that the last valid version is served. Deleting a file, deleting a
// document from a file or renaming an object in a valid document removes objects:
// those are deliberate changes, not errors. Warnings never keep objects.
package filesource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// DefaultDebounce is how long a Source waits for a burst of file events to end.
const DefaultDebounce = 100 * time.Millisecond

const (
	// maxDebounceFactor bounds the wait for a burst to end, in debounce periods, so
	// that a file written continuously still gets reloaded.
	maxDebounceFactor = 10
	// maxScans bounds the rescans of one reload done because new directories were
	// found; see Source.scan.
	maxScans = 3
	// retryInterval is how often a directory that cannot be read is read again: its
	// watch may be gone with it, so no event would say that it is back.
	retryInterval = 5 * time.Second
)

// Config configures a Source.
type Config struct {
	// Dir is the directory to read.
	Dir string
	// Logger receives diagnostics, each logged once when it first appears. Nil
	// discards them.
	Logger *slog.Logger
	// Registerer, if not nil, receives the source's metrics.
	Registerer prometheus.Registerer
	// Publish is called with each new snapshot, from Run's goroutine and one call at
	// a time. It may be nil.
	Publish func(*mesh.Snapshot)
	// Debounce is how long to wait after a file event for more; 0 means
	// DefaultDebounce.
	Debounce time.Duration
}

// Source serves the configuration of a directory. Create it with New and start it
// with Run.
type Source struct {
	dir      string
	log      *slog.Logger
	publish  func(*mesh.Snapshot)
	debounce time.Duration
	metrics  *metrics

	current     atomic.Pointer[mesh.Snapshot]
	diagnostics atomic.Pointer[[]config.Diagnostic]

	// Owned by Run's goroutine.
	version uint64
	served  []config.Object // the objects of the last load, last good versions included
	diagLog *config.DiagnosticLog
	watched map[string]os.FileInfo // directories watched, by path
	loadErr string                 // the last error reading the directory, already logged
	decoded decodeCache            // files decoded by the last load, by content
}

// New creates a Source for cfg.Dir and registers its metrics.
func New(cfg Config) *Source {
	s := &Source{
		dir:      cfg.Dir,
		log:      cfg.Logger,
		publish:  cfg.Publish,
		debounce: cfg.Debounce,
		metrics:  newMetrics(cfg.Registerer),
		watched:  map[string]os.FileInfo{},
		decoded:  decodeCache{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.diagLog = config.NewDiagnosticLog(s.log)
	if s.debounce <= 0 {
		s.debounce = DefaultDebounce
	}
	return s
}

// Current returns the last published snapshot, or nil before the first load. It is
// safe to call from any goroutine.
func (s *Source) Current() *mesh.Snapshot {
	return s.current.Load()
}

// Diagnostics returns the diagnostics of the last load. They are newer than those of
// Current when a load found new problems but no change to serve (a file broken while
// its objects keep their last good version). It is safe to call from any goroutine.
func (s *Source) Diagnostics() []config.Diagnostic {
	if d := s.diagnostics.Load(); d != nil {
		return slices.Clone(*d)
	}
	return nil
}

// Run loads the directory, publishes the first snapshot and then follows changes
// until ctx is done, when it returns nil. It returns an error if the directory cannot
// be read at the start or cannot be watched. Run must be called once.
func (s *Source) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching config directory %s: %w", s.dir, err)
	}
	defer w.Close()
	rescan, err := s.reload(w)
	if err != nil {
		return err
	}

	timer := time.NewTimer(s.debounce)
	if !rescan {
		timer.Stop()
	}
	var deadline time.Time // latest start of the pending reload; zero if none is pending
	wait := func() {
		if deadline.IsZero() {
			deadline = time.Now().Add(maxDebounceFactor * s.debounce)
		}
		timer.Reset(min(s.debounce, time.Until(deadline)))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return errors.New("config directory watcher stopped")
			}
			// Every event counts, Chmod too: making an unreadable file readable fixes it.
			wait()
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("config directory watcher stopped")
			}
			// Events may have been lost (a queue overflow): reload to catch up.
			s.log.Warn("watching config directory", "dir", s.dir, "error", err)
			wait()
		case <-timer.C:
			deadline = time.Time{}
			if again, err := s.reload(w); err != nil {
				timer.Reset(retryInterval)
			} else if again {
				wait()
			}
		}
	}
}

// reload reads the directory and publishes a snapshot if what is served changed. It
// returns an error if the directory cannot be read (what was served stays served),
// and rescan if it should run again soon because it could not finish watching new
// directories.
func (s *Source) reload(w *fsnotify.Watcher) (rescan bool, err error) {
	sc, rescan, err := s.scan(w)
	if err != nil {
		s.metrics.reloaded(false)
		if msg := err.Error(); msg != s.loadErr {
			s.log.Error("cannot read config directory; serving the last configuration", "dir", s.dir, "error", err)
			s.loadErr = msg
		}
		return false, err
	}
	s.loadErr = ""

	objs, diags := sc.read(s.decoded)
	served, kept := keepLastGood(s.served, objs, diags)
	changed := s.current.Load() == nil || !sameObjects(s.served, served)
	s.served = served

	snap := mesh.BuildFrom(s.current.Load(), s.version+1, served)
	snap.Diagnostics = append(append(snap.Diagnostics, diags...), kept...)
	s.diagnostics.Store(&snap.Diagnostics)
	s.metrics.loaded(served, snap.Diagnostics)
	if changed {
		s.version = snap.Version
		s.current.Store(snap)
		s.log.Info("config loaded", "dir", s.dir, "version", snap.Version, "objects", len(served), "diagnostics", len(snap.Diagnostics))
		if s.publish != nil {
			s.publish(snap)
		}
	}
	s.diagLog.LogNew(snap.Diagnostics)
	s.log.Debug("config reloaded", "dir", s.dir, "changed", changed, "version", s.version)
	return rescan, nil
}

// scan walks the directory and makes the watcher cover the directories found. A
// directory created just before its watch was added may already hold files nobody
// was told about, so the walk is repeated while it finds new directories; after
// maxScans walks, rescan asks for another reload instead.
func (s *Source) scan(w *fsnotify.Watcher) (sc *scanResult, rescan bool, err error) {
	for range maxScans {
		if sc, err = scan(s.dir); err != nil {
			return nil, false, err
		}
		if !s.watch(w, sc.dirs) {
			return sc, false, nil
		}
	}
	return sc, true, nil
}

// watch makes the watcher cover exactly dirs and reports whether it added a watch.
func (s *Source) watch(w *fsnotify.Watcher, dirs []dirInfo) (added bool) {
	active := map[string]bool{}
	for _, p := range w.WatchList() {
		active[p] = true
	}
	wanted := make(map[string]bool, len(dirs))
	for _, d := range dirs {
		wanted[d.path] = true
		if prev, ok := s.watched[d.path]; ok && active[d.path] && os.SameFile(prev, d.info) {
			continue
		}
		// New, or the path leads to another directory now (a symbolic link was
		// swapped, as in a ConfigMap update): drop any stale watch and watch it.
		_ = w.Remove(d.path)
		if err := w.Add(d.path); err != nil {
			s.log.Warn("cannot watch config directory; its changes are seen only with other changes", "dir", d.path, "error", err)
			delete(s.watched, d.path)
			continue
		}
		s.watched[d.path] = d.info
		added = true
	}
	for p := range s.watched {
		if !wanted[p] {
			_ = w.Remove(p) // usually gone with its directory already
			delete(s.watched, p)
		}
	}
	return added
}
