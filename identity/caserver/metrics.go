package caserver

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

type metrics struct {
	requests *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_ca_requests_total",
		Help: "CA API calls by method and gRPC code.",
	}, []string{"method", "code"})}
	if reg != nil {
		reg.MustRegister(m.requests)
	}
	return m
}

func (m *metrics) count(fullMethod string, err error) {
	method := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
}

// unary and stream map every handler's error to a gRPC status (toStatus) and count
// the call by its code.
func (m *metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	err = toStatus(err)
	m.count(info.FullMethod, err)
	return resp, err
}

func (m *metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := toStatus(handler(srv, ss))
	m.count(info.FullMethod, err)
	return err
}
