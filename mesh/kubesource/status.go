package kubesource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/workqueue"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// ConditionReconciled is the type of the condition Palisade keeps in the status of
// the custom resources it reads (status.conditions), as Istio does.
const ConditionReconciled = "Reconciled"

// Reasons of the Reconciled condition.
const (
	// ReasonAccepted (status True): the object is valid and served as it is.
	ReasonAccepted = "Accepted"
	// ReasonAcceptedWithWarnings (True): served, with warnings in the message (such
	// as fields Palisade ignores).
	ReasonAcceptedWithWarnings = "AcceptedWithWarnings"
	// ReasonInvalid (False): this version of the object is rejected; the message
	// says why, and whether an earlier valid version is still served.
	ReasonInvalid = "Invalid"
	// ReasonUnresolvedReferences (False): served, but parts of it are left out
	// because they refer to unknown hosts, subsets or ports.
	ReasonUnresolvedReferences = "UnresolvedReferences"
)

// maxConditionMessage is the length limit of a condition's message in the API.
const maxConditionMessage = 32768

// fieldManager names Palisade as the writer of the statuses.
const fieldManager = "palisade"

// The pace of status writes and the backoff of failed ones: those of client-go's
// default controller rate limiter.
const (
	writesPerSecond = 10
	writeBurst      = 100
	retryBaseDelay  = 5 * time.Millisecond
	retryMaxDelay   = 5 * time.Minute
)

// ObjectStatus is what one custom resource's Reconciled condition should be, with
// what was read of the object, for StatusWriter.Update.
type ObjectStatus struct {
	Resource        schema.GroupVersionResource
	Namespace, Name string
	ResourceVersion string
	// Conditions are the object's status.conditions as read.
	Conditions []metav1.Condition
	// Reconciled is the condition the object should have; its LastTransitionTime
	// is set when it is written.
	Reconciled metav1.Condition
}

// reconciledCondition sums up a custom resource's diagnostics (its own and those
// mesh.Build reported) as its Reconciled condition.
func reconciledCondition(r *customResource, diags []config.Diagnostic) metav1.Condition {
	c := metav1.Condition{Type: ConditionReconciled, ObservedGeneration: r.generation}
	hasError := slices.ContainsFunc(diags, func(d config.Diagnostic) bool { return d.Severity == config.SeverityError })
	switch {
	case r.invalid:
		c.Status, c.Reason = metav1.ConditionFalse, ReasonInvalid
	case hasError:
		c.Status, c.Reason = metav1.ConditionFalse, ReasonUnresolvedReferences
	case len(diags) > 0:
		c.Status, c.Reason = metav1.ConditionTrue, ReasonAcceptedWithWarnings
	default:
		c.Status, c.Reason, c.Message = metav1.ConditionTrue, ReasonAccepted, "The configuration is valid and served."
		return c
	}
	msgs := make([]string, len(diags))
	for i, d := range diags {
		msgs[i] = fmt.Sprintf("%s: %s", d.Severity, d.Message)
	}
	c.Message = strings.Join(msgs, "\n")
	if len(c.Message) > maxConditionMessage {
		c.Message = strings.ToValidUTF8(c.Message[:maxConditionMessage-3], "") + "..."
	}
	return c
}

// StatusConfig configures a StatusWriter.
type StatusConfig struct {
	// Dynamic writes the statuses.
	Dynamic dynamic.Interface
	// Logger receives write failures. Nil discards them.
	Logger *slog.Logger
	// Registerer, if not nil, receives the writer's metrics.
	Registerer prometheus.Registerer
	// Now tells the time of a condition's transition; nil means time.Now.
	Now func() time.Time
}

// StatusWriter keeps the Reconciled condition of custom resources up to date: the
// source reports what each object's condition should be (Update), and while Run
// runs the writer patches the status subresource of the objects whose condition
// differs, one at a time from its own goroutine. Objects wait in a client-go work
// queue (one entry per object, so it is bounded by the number of objects; a failed
// write is retried with exponential backoff), and writes are paced by a token bucket
// (writesPerSecond), so that the first term of a large mesh does not flood the API
// server.
type StatusWriter struct {
	dynamic dynamic.Interface
	log     *slog.Logger
	now     func() time.Time
	pace    *rate.Limiter
	writes  *prometheus.CounterVec

	mu      sync.Mutex
	desired map[objectRef]ObjectStatus
	// written holds the resource version of each object after its last write, so
	// that a report read before the write does not cause the same write again.
	written map[objectRef]string
	// notFound holds the resource version of the objects whose status could not be
	// found (deleted, or the CRD has no status subresource): not tried again until
	// the object changes.
	notFound map[objectRef]string
	queue    workqueue.TypedRateLimitingInterface[objectRef] // nil unless Run runs
}

// objectRef names an object independently of the version it is read at.
type objectRef struct {
	resource        schema.GroupResource
	namespace, name string
}

func (st ObjectStatus) ref() objectRef {
	return objectRef{st.Resource.GroupResource(), st.Namespace, st.Name}
}

// NewStatusWriter creates a StatusWriter and registers its metrics.
func NewStatusWriter(cfg StatusConfig) *StatusWriter {
	w := &StatusWriter{
		dynamic: cfg.Dynamic,
		log:     cfg.Logger,
		now:     cfg.Now,
		pace:    rate.NewLimiter(writesPerSecond, writeBurst),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_kube_status_writes_total",
			Help: "Writes of the Reconciled condition of custom resources, by result: ok, conflict (the object changed meanwhile; retried), not_found (deleted meanwhile, or no status subresource) or error (retried).",
		}, []string{"result"}),
		desired:  map[objectRef]ObjectStatus{},
		written:  map[objectRef]string{},
		notFound: map[objectRef]string{},
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.now == nil {
		w.now = time.Now
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(w.writes)
	}
	return w
}

// Update replaces the desired statuses with those of every custom resource known
// now, and queues a write for those that differ from what was read, if Run runs.
// It never blocks on a write. Config.ReportStatus of a Source calls it.
func (w *StatusWriter) Update(statuses []ObjectStatus) {
	w.mu.Lock()
	defer w.mu.Unlock()
	desired := make(map[objectRef]ObjectStatus, len(statuses))
	for _, st := range statuses {
		ref := st.ref()
		desired[ref] = st
		if w.queue != nil && w.needsWrite(ref, st) {
			w.queue.Add(ref)
		}
	}
	for _, m := range []map[objectRef]string{w.written, w.notFound} {
		for ref := range m {
			if _, ok := desired[ref]; !ok {
				delete(m, ref)
			}
		}
	}
	w.desired = desired
}

// needsWrite reports whether the object's Reconciled condition differs from the
// desired one. Called with mu held.
func (w *StatusWriter) needsWrite(ref objectRef, st ObjectStatus) bool {
	if rv, ok := w.written[ref]; ok {
		if c, err := resourceversion.CompareResourceVersion(st.ResourceVersion, rv); err == nil && c < 0 {
			return false // read before the last write: the write is not seen yet
		}
	}
	if rv, ok := w.notFound[ref]; ok && rv == st.ResourceVersion {
		return false
	}
	cur, want := meta.FindStatusCondition(st.Conditions, ConditionReconciled), st.Reconciled
	return cur == nil || cur.Status != want.Status || cur.Reason != want.Reason ||
		cur.Message != want.Message || cur.ObservedGeneration != want.ObservedGeneration
}

// Run writes statuses until ctx is done, then returns nil. Only one replica of
// palisaded may write: run it while this replica leads (as leader election's
// OnStartedLeading) and cancel ctx when leadership is lost. It may run again after
// it returned, not twice at a time.
func (w *StatusWriter) Run(ctx context.Context) error {
	q := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[objectRef](retryBaseDelay, retryMaxDelay))
	w.mu.Lock()
	if w.queue != nil {
		w.mu.Unlock()
		return errors.New("StatusWriter.Run is already running")
	}
	w.queue = q
	for ref, st := range w.desired {
		if w.needsWrite(ref, st) {
			q.Add(ref)
		}
	}
	w.mu.Unlock()

	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	for w.next(ctx, q) {
	}
	w.mu.Lock()
	w.queue = nil
	w.mu.Unlock()
	q.ShutDown()
	return nil
}

// next writes the status of the next queued object; false means stop.
func (w *StatusWriter) next(ctx context.Context, q workqueue.TypedRateLimitingInterface[objectRef]) bool {
	ref, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(ref)
	if ctx.Err() != nil {
		return false // leadership lost: write nothing more
	}
	if err := w.pace.Wait(ctx); err != nil {
		return false
	}
	w.mu.Lock() // after the wait: the latest report decides
	st, ok := w.desired[ref]
	needed := ok && w.needsWrite(ref, st)
	w.mu.Unlock()
	if !needed {
		q.Forget(ref)
		return true
	}
	rv, err := w.write(ctx, st)
	switch {
	case err == nil:
		q.Forget(ref)
		w.mu.Lock()
		w.written[ref] = rv
		w.mu.Unlock()
		w.writes.WithLabelValues("ok").Inc()
	case apierrors.IsNotFound(err):
		// Deleted, or its CRD has no status subresource: not again for this version.
		q.Forget(ref)
		w.mu.Lock()
		w.notFound[ref] = st.ResourceVersion
		w.mu.Unlock()
		w.writes.WithLabelValues("not_found").Inc()
		w.log.Debug("cannot write the status of a custom resource: not found", "resource", ref.resource.String(),
			"namespace", ref.namespace, "name", ref.name, "error", err)
	case ctx.Err() != nil:
		return false
	case apierrors.IsConflict(err):
		// Read again, the object will be reported again; until then, retry later.
		q.AddRateLimited(ref)
		w.writes.WithLabelValues("conflict").Inc()
	default:
		q.AddRateLimited(ref)
		w.writes.WithLabelValues("error").Inc()
		w.log.Warn("cannot write the status of a custom resource; will retry", "resource", ref.resource.String(),
			"namespace", ref.namespace, "name", ref.name, "error", err)
	}
	return true
}

// write patches the object's status with its conditions, the Reconciled one set
// to the desired value, if the object is still at the version read: another
// writer's condition is kept, never overwritten by a stale copy.
func (w *StatusWriter) write(ctx context.Context, st ObjectStatus) (resourceVersion string, err error) {
	conditions := slices.Clone(st.Conditions)
	c := st.Reconciled
	c.LastTransitionTime = metav1.NewTime(w.now()) // kept if the status is the same
	meta.SetStatusCondition(&conditions, c)
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": st.ResourceVersion},
		"status":   map[string]any{"conditions": conditions},
	})
	if err != nil {
		return "", fmt.Errorf("encoding the status patch: %w", err)
	}
	u, err := w.dynamic.Resource(st.Resource).Namespace(st.Namespace).Patch(ctx, st.Name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: fieldManager}, "status")
	if err != nil {
		return "", fmt.Errorf("patching the status of %s %s/%s: %w", st.Resource.GroupResource(), st.Namespace, st.Name, err)
	}
	return u.GetResourceVersion(), nil
}
