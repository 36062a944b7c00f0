package kubesource

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/palisade-mesh/palisade/mesh/config"
)

func TestReconciledCondition(t *testing.T) {
	errorDiag := config.Diagnostic{Severity: config.SeverityError, Message: "spec.http[0].route[0].destination.host: unknown host x"}
	warning := config.Diagnostic{Severity: config.SeverityWarning, Message: "spec.http[0].fault is not translated yet"}
	tests := []struct {
		name        string
		invalid     bool
		diags       []config.Diagnostic
		status      metav1.ConditionStatus
		reason      string
		messagePart string
	}{
		{"valid", false, nil, metav1.ConditionTrue, ReasonAccepted, "valid"},
		{"warnings", false, []config.Diagnostic{warning}, metav1.ConditionTrue, ReasonAcceptedWithWarnings, "warning: spec.http[0].fault"},
		{"unresolved reference", false, []config.Diagnostic{warning, errorDiag}, metav1.ConditionFalse, ReasonUnresolvedReferences, "error: spec.http[0].route[0].destination.host: unknown host x"},
		{"invalid", true, []config.Diagnostic{errorDiag}, metav1.ConditionFalse, ReasonInvalid, "unknown host"},
		{"too long a message", false, []config.Diagnostic{{Severity: config.SeverityWarning, Message: strings.Repeat("é", maxConditionMessage)}}, metav1.ConditionTrue, ReasonAcceptedWithWarnings, "..."},
	}
	for _, tt := range tests {
		c := reconciledCondition(&customResource{generation: 7, invalid: tt.invalid}, tt.diags)
		if c.Type != ConditionReconciled || c.Status != tt.status || c.Reason != tt.reason || c.ObservedGeneration != 7 ||
			!strings.Contains(c.Message, tt.messagePart) || len(c.Message) > maxConditionMessage {
			t.Errorf("%s: condition %+v; want status %s, reason %s, generation 7, message with %q of at most %d bytes",
				tt.name, c, tt.status, tt.reason, tt.messagePart, maxConditionMessage)
		}
	}
}

func TestNeedsWrite(t *testing.T) {
	want := metav1.Condition{Type: ConditionReconciled, Status: metav1.ConditionFalse, Reason: ReasonInvalid, Message: "bad", ObservedGeneration: 3}
	written := want
	written.LastTransitionTime = metav1.Now()
	other := metav1.Condition{Type: "Other", Status: metav1.ConditionTrue, Reason: "X"}
	tests := []struct {
		name       string
		conditions []metav1.Condition
		rv         string
		want       bool
	}{
		{"no condition", nil, "20", true},
		{"another type only", []metav1.Condition{other}, "20", true},
		{"same, transition time aside", []metav1.Condition{other, written}, "20", false},
		{"older generation", []metav1.Condition{func() metav1.Condition { c := written; c.ObservedGeneration = 2; return c }()}, "20", true},
		{"other message", []metav1.Condition{func() metav1.Condition { c := written; c.Message = "worse"; return c }()}, "20", true},
		{"read before the last write", nil, "9", false},
		{"read as written, another condition wanted", nil, "10", true},
		{"read after the last write", nil, "11", true},
	}
	w := NewStatusWriter(StatusConfig{})
	ref := objectRef{name: "x"}
	w.written[ref] = "10"
	for _, tt := range tests {
		if got := w.needsWrite(ref, ObjectStatus{ResourceVersion: tt.rv, Conditions: tt.conditions, Reconciled: want}); got != tt.want {
			t.Errorf("%s: needsWrite = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// statusPatches counts the writes of status subresources.
func statusPatches(c *dynamicfake.FakeDynamicClient) int {
	n := 0
	for _, a := range c.Actions() {
		if p, ok := a.(clienttesting.PatchAction); ok && p.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

func reconciled(t *testing.T, u *unstructured.Unstructured) *metav1.Condition {
	t.Helper()
	return meta.FindStatusCondition(conditions(u), ConditionReconciled)
}

func TestStatusWriter(t *testing.T) {
	vs := resource(t, "vs-1", virtualService("reviews", "reviews", "2s"))
	other := map[string]any{"type": "Other", "status": "True", "reason": "Elsewhere", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}
	if err := unstructured.SetNestedSlice(vs.Object, []any{other}, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	dyn := newDynamicFake(vs)
	reg := prometheus.NewRegistry()
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	w := NewStatusWriter(StatusConfig{Dynamic: dyn, Registerer: reg, Now: func() time.Time {
		clock = clock.Add(time.Minute) // read from the writer's goroutine only
		return clock
	}})
	status := func(st metav1.ConditionStatus, reason string, read *unstructured.Unstructured) ObjectStatus {
		return ObjectStatus{
			Resource: gvrOf(vs), Namespace: "shop", Name: "reviews", Conditions: conditions(read),
			Reconciled: metav1.Condition{Type: ConditionReconciled, Status: st, Reason: reason, Message: reason, ObservedGeneration: 1},
		}
	}

	// Not leading: nothing is written.
	w.Update([]ObjectStatus{status(metav1.ConditionFalse, ReasonInvalid, vs)})
	if n := statusPatches(dyn); n != 0 {
		t.Fatalf("%d status writes before Run", n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	eventually(t, "the status write", func() bool { return statusPatches(dyn) == 1 })
	got := readVS(t, dyn)
	c := reconciled(t, got)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonInvalid || c.LastTransitionTime.IsZero() {
		t.Fatalf("written condition %+v; want False, Invalid, with a transition time", c)
	}
	if o := meta.FindStatusCondition(conditions(got), "Other"); o == nil || o.Reason != "Elsewhere" {
		t.Errorf("another writer's condition was lost: %v", conditions(got))
	}
	if err := w.Run(ctx); err == nil {
		t.Error("a second Run at the same time did not fail")
	}

	// The object read back with the condition: nothing more to write. A change
	// is written, the old transition time kept while the status stays.
	w.Update([]ObjectStatus{status(metav1.ConditionFalse, ReasonInvalid, got)})
	w.Update([]ObjectStatus{status(metav1.ConditionFalse, ReasonUnresolvedReferences, got)})
	eventually(t, "the second write", func() bool { return statusPatches(dyn) == 2 })
	if c2 := reconciled(t, readVS(t, dyn)); c2.Reason != ReasonUnresolvedReferences || !c2.LastTransitionTime.Equal(&c.LastTransitionTime) {
		t.Errorf("rewritten condition %+v; want reason UnresolvedReferences, transition time %v kept", c2, c.LastTransitionTime)
	}
	if v := metricValue(t, reg, "palisade_kube_status_writes_total", "result", "ok"); v != 2 {
		t.Errorf("successful writes metric = %v, want 2", v)
	}

	// Leadership lost: Run returns, later changes wait for the next term.
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.Update([]ObjectStatus{status(metav1.ConditionTrue, ReasonAccepted, readVS(t, dyn))})
	if n := statusPatches(dyn); n != 2 {
		t.Errorf("%d status writes without a running writer, want still 2", n)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- w.Run(ctx) }()
	eventually(t, "the write of the next term", func() bool { return statusPatches(dyn) == 3 })
	if c3 := reconciled(t, readVS(t, dyn)); c3.Status != metav1.ConditionTrue || c3.LastTransitionTime.Equal(&c.LastTransitionTime) {
		t.Errorf("condition after the status changed %+v; want True with a new transition time", c3)
	}
}

// readVS reads the test's VirtualService back from the fake.
func readVS(t *testing.T, dyn *dynamicfake.FakeDynamicClient) *unstructured.Unstructured {
	t.Helper()
	k := kindOf("VirtualService")
	u, err := dyn.Resource(k.gvr("v1")).Namespace("shop").Get(context.Background(), "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestRunReportsStatus runs the source with a status writer: the Reconciled
// condition follows what mesh.Build and config.Decode say about the object.
func TestRunReportsStatus(t *testing.T) {
	objs := append(reviews(), allCRDs()...)
	objs = append(objs, resource(t, "vs-1", virtualService("reviews", "ratings", "2s")))
	h := newHarness(objs...)
	writer := NewStatusWriter(StatusConfig{Dynamic: h.dynamic})
	h.run(t, Config{ReportStatus: writer.Update})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- writer.Run(ctx) }()
	defer func() { cancel(); <-done }()
	h.next(t)

	condition := func(status metav1.ConditionStatus, reason, message string) func() bool {
		return func() bool {
			c := reconciled(t, h.get(t, "VirtualService", "shop", "reviews"))
			return c != nil && c.Status == status && c.Reason == reason && strings.Contains(c.Message, message)
		}
	}
	eventually(t, "Reconciled False for an unknown host", condition(metav1.ConditionFalse, ReasonUnresolvedReferences, "unknown host ratings.shop.svc.cluster.local"))

	ratings := kubeService("ratings", svcPort("http", 80, intstr.FromInt32(80)))
	if _, err := h.client.CoreV1().Services("shop").Create(context.Background(), ratings, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Reconciled True once the host exists", condition(metav1.ConditionTrue, ReasonAccepted, "valid"))

	h.apply(t, resource(t, "vs-1", virtualService("reviews", "ratings", "soon")))
	eventually(t, "Reconciled False for an invalid version", condition(metav1.ConditionFalse, ReasonInvalid, "last valid version"))
	writes := statusPatches(h.dynamic)
	h.apply(t, resource(t, "dr-1", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: shop}\nspec: {host: ratings}\n"))
	eventually(t, "the DestinationRule's condition", func() bool {
		return reconciled(t, h.get(t, "DestinationRule", "shop", "ratings")) != nil
	})
	if n := statusPatches(h.dynamic) - writes; n != 1 {
		t.Errorf("%d status writes for one new object, want 1 (unchanged conditions are not written again)", n)
	}
}

// TestStatusWriterNotFound: an object gone (or without a status subresource) is
// not written again until a newer version of it is reported.
func TestStatusWriterNotFound(t *testing.T) {
	reg := prometheus.NewRegistry()
	w := NewStatusWriter(StatusConfig{Dynamic: newDynamicFake(), Registerer: reg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	st := ObjectStatus{
		Resource: kindOf("VirtualService").gvr("v1"), Namespace: "shop", Name: "gone", ResourceVersion: "5",
		Reconciled: metav1.Condition{Type: ConditionReconciled, Status: metav1.ConditionTrue, Reason: ReasonAccepted},
	}
	w.Update([]ObjectStatus{st})
	eventually(t, "the failed write", func() bool {
		return metricValue(t, reg, "palisade_kube_status_writes_total", "result", "not_found") == 1
	})
	w.mu.Lock()
	again := w.needsWrite(st.ref(), st)
	st.ResourceVersion = "6"
	newer := w.needsWrite(st.ref(), st)
	w.mu.Unlock()
	if again || !newer {
		t.Errorf("after not found: write the same version again %v, a newer one %v; want false, true", again, newer)
	}
}
