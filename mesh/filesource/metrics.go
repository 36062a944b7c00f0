package filesource

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-mesh/palisade/mesh/config"
)

type metrics struct {
	invalid    prometheus.Gauge
	objects    *prometheus.GaugeVec
	reloads    *prometheus.CounterVec
	lastReload prometheus.Gauge
	// kinds ever reported, so that a kind whose last object goes away drops to 0
	// instead of keeping its old value.
	kinds map[config.Kind]bool
}

// newMetrics creates the source's metrics and registers them on reg, if not nil.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		invalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_config_invalid_documents",
			Help: "Error diagnostics of the last configuration load: rejected documents and unresolved references.",
		}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "palisade_config_objects",
			Help: "Configuration objects served, by kind.",
		}, []string{"kind"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_config_reloads_total",
			Help: "Configuration loads, by result: error when the directory could not be read or a diagnostic is an error.",
		}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_config_last_reload_timestamp_seconds",
			Help: "Unix time of the last configuration load, successful or not.",
		}),
		kinds: map[config.Kind]bool{},
	}
	// Both results exist from the start, so that rate() sees the first error.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	if reg != nil {
		reg.MustRegister(m.invalid, m.objects, m.reloads, m.lastReload)
	}
	return m
}

// loaded records a load that read the directory.
func (m *metrics) loaded(served []config.Object, diags []config.Diagnostic) {
	errs := 0
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			errs++
		}
	}
	m.invalid.Set(float64(errs))
	m.reloaded(errs == 0)

	counts := map[config.Kind]int{}
	for _, o := range served {
		counts[o.Kind]++
		m.kinds[o.Kind] = true
	}
	for k := range m.kinds {
		m.objects.WithLabelValues(string(k)).Set(float64(counts[k]))
	}
}

// reloaded counts a load, successful or not.
func (m *metrics) reloaded(ok bool) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.reloads.WithLabelValues(result).Inc()
	m.lastReload.SetToCurrentTime()
}
