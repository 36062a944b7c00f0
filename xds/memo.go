package xds

import (
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/palisade-mesh/palisade/mesh"
)

// Memo carries one view's per-service translations from a configuration version to
// the next, so that a change re-translates only what it touches. Each entry is keyed
// by the model objects it was made from and checked against a fingerprint of every
// other object it read (the VirtualService and DestinationRules chosen, the services
// its routes lead to); mesh.BuildFrom keeps unchanged model objects identical across
// snapshots, which is what makes identity a sound test. A reused resource is the very
// same message, so the server can also reuse its marshalled form.
//
// A Memo belongs to one namespace, proxy kind and Options; it may pass from one
// Target of these to another (the inbound listener's entry is checked against the
// target's PeerAuthentications and ExtAuthz like any other input). The output of GenerateWith is
// always equal to Generate's (TestMemoMatchesFullTranslation).
type Memo struct {
	routes       memoTable[servicePort, *routeSet]
	clusters     memoTable[servicePort, []*cluster.Cluster]
	endpoints    memoTable[servicePort, []*endpoint.ClusterLoadAssignment]
	listeners    memoTable[string, *listener.Listener]
	routeConfigs memoTable[string, *route.RouteConfiguration]
	managers     memoTable[string, *anypb.Any]
}

type servicePort struct {
	svc  *mesh.Service
	port uint32
}

// routeSet is a service port's routes; its identity stands for them in fingerprints.
type routeSet struct{ routes []*route.Route }

// memoTable holds last version's entries and collects this version's. A table that
// is off (a one-off translation) neither looks up nor records.
type memoTable[K comparable, V any] struct {
	prev, next map[K]memoEntry[V]
	off        bool
}

type memoEntry[V any] struct {
	fingerprint []any
	value       V
}

// get returns the value for k: last version's if its fingerprint is the same, else a
// new one from make.
func (t *memoTable[K, V]) get(k K, fingerprint []any, make func() V) V {
	if t.off {
		return make()
	}
	if t.next == nil {
		t.next = map[K]memoEntry[V]{}
	}
	if e, ok := t.prev[k]; ok && slices.Equal(e.fingerprint, fingerprint) {
		t.next[k] = e
		return e.value
	}
	v := make()
	t.next[k] = memoEntry[V]{fingerprint, v}
	return v
}

// noMemo is the memo of a one-off translation: nothing is looked up or recorded.
func noMemo() *Memo {
	return &Memo{
		routes:       memoTable[servicePort, *routeSet]{off: true},
		clusters:     memoTable[servicePort, []*cluster.Cluster]{off: true},
		endpoints:    memoTable[servicePort, []*endpoint.ClusterLoadAssignment]{off: true},
		listeners:    memoTable[string, *listener.Listener]{off: true},
		routeConfigs: memoTable[string, *route.RouteConfiguration]{off: true},
		managers:     memoTable[string, *anypb.Any]{off: true},
	}
}

// advance returns a Memo whose previous entries are m's current ones.
func (m *Memo) advance() *Memo {
	if m == nil {
		return &Memo{}
	}
	return &Memo{
		routes:       memoTable[servicePort, *routeSet]{prev: m.routes.next},
		clusters:     memoTable[servicePort, []*cluster.Cluster]{prev: m.clusters.next},
		endpoints:    memoTable[servicePort, []*endpoint.ClusterLoadAssignment]{prev: m.endpoints.next},
		listeners:    memoTable[string, *listener.Listener]{prev: m.listeners.next},
		routeConfigs: memoTable[string, *route.RouteConfiguration]{prev: m.routeConfigs.next},
		managers:     memoTable[string, *anypb.Any]{prev: m.managers.next},
	}
}
