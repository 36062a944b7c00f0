// Package kubesource is the Kubernetes config source: it reads Palisade's custom
// resources (the kinds of mesh/config) and Kubernetes Services with their
// EndpointSlices, Pods and Nodes through informers, and publishes a new
// mesh.Snapshot whenever what they define changes.
//
// Custom resources are decoded by config.Decode from their JSON, so that this
// source, the file source and the validating webhook agree on what is valid. A
// Service becomes a ServiceEntry (see serviceEntry), which mesh.Build treats like
// any other: the file source serves the same mesh from ServiceEntries written by
// hand. Namespaces are not read: nothing in the model depends on them.
//
// Each custom resource kind is read from when its CustomResourceDefinition is
// established, at the CRD's storage version, and dropped when the CRD goes, so
// palisaded may start before the CRDs are installed; an absent kind never delays a
// snapshot.
//
// Informer event handlers only record what changed and wake the source's loop; the
// loop waits for a burst of events to end, converts what changed (converted objects
// are cached, so that an unchanged object keeps its decoded spec and mesh.BuildFrom
// reuses what it built from it), builds and publishes.
//
// # Keep last good
//
// As in the file source, an object whose new version is invalid keeps being served
// in its last valid version (read since palisaded started), with an error and a
// warning in the diagnostics. The validating webhook normally rejects such versions;
// with its failure policy Ignore they can still get in. Deleting an object removes
// it.
package kubesource

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apiextensionsinformers "k8s.io/apiextensions-apiserver/pkg/client/informers/externalversions"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
)

// DefaultDebounce is how long a Source waits for a burst of events to end.
const DefaultDebounce = 100 * time.Millisecond

// maxDebounceFactor bounds the wait for a burst to end, in debounce periods, so that
// a cluster that changes all the time still gets its changes served.
const maxDebounceFactor = 10

// Config configures a Source.
type Config struct {
	// Client reads Services, EndpointSlices, Pods and Nodes.
	Client kubernetes.Interface
	// Dynamic reads the custom resources.
	Dynamic dynamic.Interface
	// Extensions reads CustomResourceDefinitions, to learn which kinds exist.
	Extensions apiextensionsclient.Interface
	// Logger receives diagnostics, each logged once when it first appears. Nil
	// discards them.
	Logger *slog.Logger
	// Registerer, if not nil, receives the source's metrics.
	Registerer prometheus.Registerer
	// Publish is called with each new snapshot, from Run's goroutine and one call at
	// a time. It may be nil.
	Publish func(*mesh.Snapshot)
	// ReportStatus, if not nil, is called from Run's goroutine after every rebuild
	// that concerned custom resources, with the status each of them should have
	// (StatusWriter.Update). It must not block.
	ReportStatus func([]ObjectStatus)
	// Debounce is how long to wait after an event for more; 0 or less means
	// DefaultDebounce.
	Debounce time.Duration
}

// Source serves the configuration of a Kubernetes cluster. Create it with New and
// start it with Run.
type Source struct {
	client       kubernetes.Interface
	dynamic      dynamic.Interface
	extensions   apiextensionsclient.Interface
	log          *slog.Logger
	publish      func(*mesh.Snapshot)
	reportStatus func([]ObjectStatus)
	debounce     time.Duration
	metrics      *metrics

	current     atomic.Pointer[mesh.Snapshot]
	diagnostics atomic.Pointer[[]config.Diagnostic]
	synced      chan struct{}

	// Written by the event handlers, read by the loop.
	mu      sync.Mutex
	pending changes
	wake    chan struct{} // buffered (1): a pending wake-up stands for any number of events

	// Owned by Run's goroutine.
	listers      listers
	workloads    workloads
	kinds        map[config.Kind]*kindInformer
	kindWG       sync.WaitGroup             // the goroutines of the kinds' informers
	resources    map[string]*customResource // by source name
	services     map[types.NamespacedName]*serviceState
	podServices  map[types.NamespacedName][]types.NamespacedName // the Services whose endpoints refer to each pod
	nodeServices map[string][]types.NamespacedName
	version      uint64
	served       map[string]proto.Message // the specs of the last snapshot, by source name
	buildDiags   []config.Diagnostic      // mesh.Build's diagnostics of the last snapshot
	diagLog      *config.DiagnosticLog
}

// New creates a Source and registers its metrics.
func New(cfg Config) *Source {
	s := &Source{
		client:       cfg.Client,
		dynamic:      cfg.Dynamic,
		extensions:   cfg.Extensions,
		log:          cfg.Logger,
		publish:      cfg.Publish,
		reportStatus: cfg.ReportStatus,
		debounce:     cfg.Debounce,
		metrics:      newMetrics(cfg.Registerer),
		synced:       make(chan struct{}),
		wake:         make(chan struct{}, 1),
		pending:      newChanges(),
		kinds:        map[config.Kind]*kindInformer{},
		resources:    map[string]*customResource{},
		services:     map[types.NamespacedName]*serviceState{},
		podServices:  map[types.NamespacedName][]types.NamespacedName{},
		nodeServices: map[string][]types.NamespacedName{},
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

// Current returns the last published snapshot, or nil before the first. It is safe
// to call from any goroutine.
func (s *Source) Current() *mesh.Snapshot {
	return s.current.Load()
}

// Diagnostics returns the diagnostics of the last rebuild. They are newer than
// those of Current when a rebuild found new problems but no change to serve (an
// object became invalid and keeps its last good version). It is safe to call from
// any goroutine.
func (s *Source) Diagnostics() []config.Diagnostic {
	if d := s.diagnostics.Load(); d != nil {
		return slices.Clone(*d)
	}
	return nil
}

// Synced is closed once the first snapshot is published: after the informers have
// listed every Service, EndpointSlice, Pod, Node and CustomResourceDefinition and
// the objects of every kind whose CRD is established.
func (s *Source) Synced() <-chan struct{} {
	return s.synced
}

// Run starts the informers, publishes the first snapshot once they have synced and
// then follows changes until ctx is done, when it returns nil. It returns an error
// if Config lacks a client or the informers cannot be set up. Run must be called
// once.
func (s *Source) Run(ctx context.Context) error {
	if s.client == nil || s.dynamic == nil || s.extensions == nil {
		return errors.New("kubesource: Config.Client, Config.Dynamic and Config.Extensions are required")
	}
	ctx, cancel := context.WithCancel(ctx)
	core := informers.NewSharedInformerFactoryWithOptions(s.client, 0, informers.WithTransform(strip))
	ext := apiextensionsinformers.NewSharedInformerFactoryWithOptions(s.extensions, 0, apiextensionsinformers.WithTransform(strip))
	defer func() {
		cancel()
		core.Shutdown()
		ext.Shutdown()
		s.kindWG.Wait()
	}()
	registrations, err := s.watch(core, ext)
	if err != nil {
		return err
	}
	core.StartWithContext(ctx)
	ext.StartWithContext(ctx)
	s.log.Info("waiting for the Kubernetes caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), registrations...) {
		return nil
	}
	s.reconcileKinds(ctx)
	var kindsSynced []cache.InformerSynced
	for _, ki := range s.kinds {
		kindsSynced = append(kindsSynced, ki.informer.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), kindsSynced...) {
		return nil
	}
	s.rebuild(ctx, true)
	close(s.synced)

	timer := time.NewTimer(s.debounce)
	timer.Stop()
	var deadline time.Time // latest start of the pending rebuild; zero if none is pending
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
			if deadline.IsZero() {
				deadline = time.Now().Add(maxDebounceFactor * s.debounce)
			}
			timer.Reset(min(s.debounce, time.Until(deadline)))
		case <-timer.C:
			deadline = time.Time{}
			s.rebuild(ctx, false)
		}
	}
}

// rebuild converts what changed since the last rebuild, builds a snapshot and
// publishes it if the objects served changed (always, the first time).
func (s *Source) rebuild(ctx context.Context, first bool) {
	start := time.Now()
	s.mu.Lock()
	c := s.pending
	s.pending = newChanges()
	s.mu.Unlock()

	if c.crds {
		s.reconcileKinds(ctx)
	}
	dirty := c.services
	for p := range c.pods {
		dirty.Insert(s.podServices[p]...)
	}
	for n := range c.nodes {
		dirty.Insert(s.nodeServices[n]...)
	}
	if first {
		all, _ := s.listers.services.List(labels.Everything())
		for _, svc := range all {
			dirty.Insert(types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name})
		}
	}
	resourcesChanged := first || c.resources || c.crds
	if len(dirty) == 0 && !resourcesChanged {
		return // pods or nodes no endpoint refers to
	}
	for key := range dirty {
		s.updateService(key)
	}
	if resourcesChanged {
		s.readResources()
	}

	objs, diags, counts, invalid := s.objects()
	changed := first || !s.sameServed(objs)
	var snap *mesh.Snapshot
	if changed {
		snap = mesh.BuildFrom(s.current.Load(), s.version+1, objs)
		s.buildDiags = snap.Diagnostics
		s.served = make(map[string]proto.Message, len(objs))
		for _, o := range objs {
			s.served[o.Source.File] = o.Spec
		}
	}
	diags = append(diags, s.buildDiags...)
	slices.SortStableFunc(diags, func(a, b config.Diagnostic) int { return strings.Compare(a.Source.File, b.Source.File) })
	s.diagnostics.Store(&diags)
	s.metrics.rebuilt(changed, start, counts, invalid)
	if changed {
		snap.Diagnostics = diags
		s.version = snap.Version
		s.current.Store(snap)
		level := slog.LevelDebug // endpoints change all the time in a cluster
		if first {
			level = slog.LevelInfo
		}
		s.log.Log(ctx, level, "config built from Kubernetes", "version", snap.Version, "objects", len(objs), "diagnostics", len(diags))
		if s.publish != nil {
			s.publish(snap)
		}
	}
	s.diagLog.LogNew(diags)
	if s.reportStatus != nil && (changed || resourcesChanged) {
		s.reportStatus(s.statuses(diags))
	}
	s.log.Debug("config rebuilt", "changed", changed, "version", s.version, "services_converted", len(dirty), "duration", time.Since(start))
}

// objects returns the objects to serve, the diagnostics of their conversion, the
// number of objects by kind label and the number of invalid objects.
func (s *Source) objects() (objs []config.Object, diags []config.Diagnostic, counts map[string]int, invalid int) {
	counts = map[string]int{}
	for _, r := range s.resources {
		if r.served.Spec != nil {
			objs = append(objs, r.served)
			counts[string(r.served.Kind)]++
		}
		diags = append(diags, r.diags...)
		if r.invalid {
			invalid++
		}
	}
	for _, st := range s.services {
		if st.served.Spec != nil {
			objs = append(objs, st.served)
			counts[serviceKindLabel]++
		}
		diags = append(diags, st.diags...)
		if st.invalid {
			invalid++
		}
	}
	return objs, diags, counts, invalid
}

// sameServed reports whether objs are the objects of the last snapshot. Conversion
// keeps the Spec of an unchanged object, so comparing pointers is enough.
func (s *Source) sameServed(objs []config.Object) bool {
	if len(objs) != len(s.served) {
		return false
	}
	for _, o := range objs {
		if spec, ok := s.served[o.Source.File]; !ok || spec != o.Spec {
			return false
		}
	}
	return true
}

// statuses returns the Reconciled condition each custom resource should have.
func (s *Source) statuses(diags []config.Diagnostic) []ObjectStatus {
	byObject := map[string][]config.Diagnostic{}
	for _, d := range diags {
		if _, ok := s.resources[d.Source.File]; ok {
			byObject[d.Source.File] = append(byObject[d.Source.File], d)
		}
	}
	out := make([]ObjectStatus, 0, len(s.resources))
	for src, r := range s.resources {
		out = append(out, ObjectStatus{
			Resource:        r.resource,
			Namespace:       r.namespace,
			Name:            r.name,
			ResourceVersion: r.resourceVersion,
			Conditions:      r.conditions,
			Reconciled:      reconciledCondition(r, byObject[src]),
		})
	}
	return out
}
