package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the xDS server. A nil *Metrics records nothing.
type Metrics struct {
	connected    prometheus.Gauge
	pushes       *prometheus.CounterVec
	pushBytes    *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	invalid      *prometheus.CounterVec
	translations prometheus.Histogram
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_xds_connected_streams", Help: "Open xDS streams.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_xds_pushes_total", Help: "xDS responses sent, by type and protocol.",
		}, []string{"type", "protocol"}),
		pushBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_xds_push_bytes_total", Help: "Bytes of xDS responses sent, by type and protocol.",
		}, []string{"type", "protocol"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_xds_nacks_total", Help: "xDS responses rejected by proxies, by type.",
		}, []string{"type"}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_xds_invalid_resources_total", Help: "Generated resources dropped because they failed validation, by type.",
		}, []string{"type"}),
		translations: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "palisade_xds_translation_seconds", Help: "Time to translate the mesh for one view.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.pushBytes, m.nacks, m.invalid, m.translations)
	}
	return m
}

type translationTimer struct {
	m     *Metrics
	start time.Time
}

func (m *Metrics) startTranslation() translationTimer { return translationTimer{m, time.Now()} }

func (t translationTimer) done() {
	if t.m != nil {
		t.m.translations.Observe(time.Since(t.start).Seconds())
	}
}

func (m *Metrics) streamOpened(delta int) {
	if m != nil {
		m.connected.Add(float64(delta))
	}
}

func (m *Metrics) pushed(typeURL, protocol string, bytes int) {
	if m != nil {
		t := shortType(typeURL)
		m.pushes.WithLabelValues(t, protocol).Inc()
		m.pushBytes.WithLabelValues(t, protocol).Add(float64(bytes))
	}
}

func (m *Metrics) invalidResource(typeURL string) {
	if m != nil {
		m.invalid.WithLabelValues(shortType(typeURL)).Inc()
	}
}

func (m *Metrics) nacked(typeURL string) {
	if m != nil {
		m.nacks.WithLabelValues(shortType(typeURL)).Inc()
	}
}

// shortType turns a type URL into a short metric label (Listener, Cluster, ...).
func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
