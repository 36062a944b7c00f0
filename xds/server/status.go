package server

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
	"unique"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
)

// Tracker follows every xDS stream through go-control-plane's callbacks: which proxy
// it serves, what was sent, what the proxy acknowledged or rejected. It backs
// /debug/syncz, the NACK log and the push metrics.
type Tracker struct {
	log      *slog.Logger
	metrics  *Metrics
	throttle *pushThrottle
	now      func() time.Time

	mu      sync.Mutex
	streams map[streamKey]*stream
}

type streamKey struct {
	id    int64
	delta bool // sotw and delta streams are numbered separately
}

type stream struct {
	peer      string
	node      string
	namespace string
	kind      string
	labels    map[string]string
	since     time.Time
	types     map[string]*TypeStatus
	nonces    map[string]string // nonce → version sent, to name what a NACK rejects
}

// TypeStatus is the sync state of one resource type on one stream.
type TypeStatus struct {
	TypeURL   string    `json:"type_url"`
	Sent      string    `json:"sent_version,omitempty"`
	SentAt    time.Time `json:"sent_at,omitzero"`
	Acked     string    `json:"acked_version,omitempty"`
	AckedAt   time.Time `json:"acked_at,omitzero"`
	Nacked    string    `json:"nacked_version,omitempty"`
	NackError string    `json:"nack_error,omitempty"`
	NackedAt  time.Time `json:"nacked_at,omitzero"`
}

// ProxyStatus is one connected stream as /debug/syncz shows it.
type ProxyStatus struct {
	Node      string            `json:"node"`
	Namespace string            `json:"namespace,omitempty"`
	Kind      string            `json:"kind,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Protocol  string            `json:"protocol"`
	Peer      string            `json:"peer,omitempty"`
	Since     time.Time         `json:"connected_since"`
	Types     []TypeStatus      `json:"types"`
}

// NewTracker returns an empty tracker. It frees the push throttle's slots as proxies
// receive their pushes; throttle may be nil.
func NewTracker(log *slog.Logger, m *Metrics, throttle *pushThrottle) *Tracker {
	if log == nil {
		log = slog.Default()
	}
	return &Tracker{log: log, metrics: m, throttle: throttle, now: time.Now, streams: map[streamKey]*stream{}}
}

var _ serverv3.Callbacks = (*Tracker)(nil)

// Status lists the connected streams sorted by node, then protocol.
func (t *Tracker) Status() []ProxyStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ProxyStatus, 0, len(t.streams))
	for k, s := range t.streams {
		ps := ProxyStatus{Node: s.node, Namespace: s.namespace, Kind: s.kind, Labels: s.labels, Protocol: "sotw", Peer: s.peer, Since: s.since}
		if k.delta {
			ps.Protocol = "delta"
		}
		for _, ts := range s.types {
			ps.Types = append(ps.Types, *ts)
		}
		slices.SortFunc(ps.Types, func(a, b TypeStatus) int { return cmp.Compare(a.TypeURL, b.TypeURL) })
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Protocol, b.Protocol), a.Since.Compare(b.Since))
	})
	return out
}

func (t *Tracker) open(ctx context.Context, k streamKey) error {
	s := &stream{since: t.now(), types: map[string]*TypeStatus{}, nonces: map[string]string{}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		s.peer = p.Addr.String()
	}
	t.mu.Lock()
	t.streams[k] = s
	t.mu.Unlock()
	t.metrics.streamOpened(1)
	return nil
}

func (t *Tracker) closed(k streamKey) {
	t.throttle.closed(k)
	t.mu.Lock()
	delete(t.streams, k)
	t.mu.Unlock()
	t.metrics.streamOpened(-1)
}

// request records the node and what a request acknowledges or rejects.
func (t *Tracker) request(k streamKey, node *core.Node, typeURL, nonce, ackVersion string, errDetail string, isNack bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[k]
	if s == nil {
		return
	}
	if node != nil && s.node == "" {
		s.node = node.GetId()
		if p, err := ProxyFromNode(node); err == nil {
			s.namespace, s.kind, s.labels = p.Namespace, string(p.Kind), p.Labels
		}
	}
	ts := s.types[typeURL]
	if ts == nil {
		ts = &TypeStatus{TypeURL: typeURL}
		s.types[typeURL] = ts
	}
	if nonce == "" {
		return // an initial request or a new subscription: nothing to acknowledge
	}
	t.throttle.received(sentKey{k, typeURL})
	sent := s.nonces[nonce]
	delete(s.nonces, nonce)
	if isNack {
		ts.Nacked, ts.NackError, ts.NackedAt = sent, errDetail, t.now()
		t.metrics.nacked(typeURL)
		t.log.Warn("proxy rejected configuration; holding it until the configuration changes",
			"node", s.node, "type", typeURL, "version", sent, "error", errDetail)
		return
	}
	if ackVersion == "" {
		ackVersion = sent
	}
	ts.Acked, ts.AckedAt = ackVersion, t.now()
}

func (t *Tracker) response(k streamKey, typeURL, nonce, version, protocol string, size int) {
	t.mu.Lock()
	if s := t.streams[k]; s != nil {
		ts := s.types[typeURL]
		if ts == nil {
			ts = &TypeStatus{TypeURL: typeURL}
			s.types[typeURL] = ts
		}
		ts.Sent, ts.SentAt = version, t.now()
		s.nonces[nonce] = version
	}
	t.mu.Unlock()
	t.metrics.pushed(typeURL, protocol, size)
}

// OnStreamOpen implements go-control-plane's callbacks.
func (t *Tracker) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return t.open(ctx, streamKey{id: id})
}

// OnStreamClosed implements go-control-plane's callbacks.
func (t *Tracker) OnStreamClosed(id int64, _ *core.Node) { t.closed(streamKey{id: id}) }

// OnDeltaStreamOpen implements go-control-plane's callbacks.
func (t *Tracker) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return t.open(ctx, streamKey{id: id, delta: true})
}

// OnDeltaStreamClosed implements go-control-plane's callbacks.
func (t *Tracker) OnDeltaStreamClosed(id int64, _ *core.Node) {
	t.closed(streamKey{id: id, delta: true})
}

// internNames makes the resource names of a request share memory with every other
// request's: the server keeps each stream's subscribed names, and without this a
// fleet subscribing to a large mesh by name holds a private copy of every name per
// proxy.
func internNames(names []string) {
	for i, n := range names {
		names[i] = unique.Make(n).Value()
	}
}

// OnStreamRequest implements go-control-plane's callbacks.
func (t *Tracker) OnStreamRequest(id int64, r *discovery.DiscoveryRequest) error {
	internNames(r.ResourceNames)
	t.request(streamKey{id: id}, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetVersionInfo(),
		r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
	return nil
}

// OnStreamResponse implements go-control-plane's callbacks.
func (t *Tracker) OnStreamResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, r *discovery.DiscoveryResponse) {
	t.throttle.sent(req, sentKey{streamKey{id: id}, r.GetTypeUrl()})
	t.response(streamKey{id: id}, r.GetTypeUrl(), r.GetNonce(), r.GetVersionInfo(), "sotw", proto.Size(r))
}

// OnStreamDeltaRequest implements go-control-plane's callbacks.
func (t *Tracker) OnStreamDeltaRequest(id int64, r *discovery.DeltaDiscoveryRequest) error {
	internNames(r.ResourceNamesSubscribe)
	internNames(r.ResourceNamesUnsubscribe)
	t.request(streamKey{id: id, delta: true}, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), "",
		r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
	return nil
}

// OnStreamDeltaResponse implements go-control-plane's callbacks.
func (t *Tracker) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
	t.throttle.sent(req, sentKey{streamKey{id: id, delta: true}, r.GetTypeUrl()})
	t.response(streamKey{id: id, delta: true}, r.GetTypeUrl(), r.GetNonce(), r.GetSystemVersionInfo(), "delta", proto.Size(r))
}

// OnFetchRequest implements go-control-plane's callbacks; REST is not served.
func (t *Tracker) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

// OnFetchResponse implements go-control-plane's callbacks; REST is not served.
func (t *Tracker) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}
