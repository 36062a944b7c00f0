package kubesource

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	events   *prometheus.CounterVec
	objects  *prometheus.GaugeVec
	invalid  prometheus.Gauge
	watched  *prometheus.GaugeVec
	rebuilds *prometheus.CounterVec
	duration prometheus.Histogram
}

// serviceKindLabel is the kind label of the ServiceEntries made of Services.
const serviceKindLabel = "Service"

// newMetrics creates the source's metrics and registers them on reg, if not nil.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_kube_events_total",
			Help: "Informer events received, by resource.",
		}, []string{"resource"}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "palisade_kube_objects",
			Help: "Objects served, by kind (Service: the ServiceEntries standing for Kubernetes Services).",
		}, []string{"kind"}),
		invalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_kube_invalid_objects",
			Help: "Objects whose current version is rejected (their last valid version, if any, is served).",
		}),
		watched: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "palisade_kube_crd_watched",
			Help: "1 when the kind's CustomResourceDefinition is established and its objects are read, else 0.",
		}, []string{"kind"}),
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_kube_rebuilds_total",
			Help: "Rebuilds after changes, by result: published (a new snapshot) or unchanged.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "palisade_kube_rebuild_duration_seconds",
			Help:    "Time to convert the changed objects and build the snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
	}
	for _, k := range crdKinds {
		m.watched.WithLabelValues(string(k.kind)).Set(0)
	}
	if reg != nil {
		reg.MustRegister(m.events, m.objects, m.invalid, m.watched, m.rebuilds, m.duration)
	}
	return m
}

// rebuilt records a rebuild and the objects it served, by kind label.
func (m *metrics) rebuilt(published bool, start time.Time, counts map[string]int, invalid int) {
	result := "unchanged"
	if published {
		result = "published"
	}
	m.rebuilds.WithLabelValues(result).Inc()
	m.duration.Observe(time.Since(start).Seconds())
	m.invalid.Set(float64(invalid))
	for _, k := range crdKinds {
		m.objects.WithLabelValues(string(k.kind)).Set(float64(counts[string(k.kind)]))
	}
	m.objects.WithLabelValues(serviceKindLabel).Set(float64(counts[serviceKindLabel]))
}
