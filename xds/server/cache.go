// Package server serves generated xDS configuration over go-control-plane's ADS
// servers (state of the world and delta), and reports what each proxy has.
//
// Cache implements go-control-plane's cache interface instead of using its snapshot
// cache, for three reasons found with v0.14: the snapshot cache answers an ADS client
// only when it asked for every resource of a type (proxyless clients ask for exact
// names), it needs one snapshot per node (we share one translation per view), and it
// resends a NACKed version in a tight loop. Here every answer is cut to the names the
// client asked for, translations are shared by proxies with the same view, and a
// rejected version is held until the configuration changes.
package server

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/xds"
)

// CacheConfig configures a Cache.
type CacheConfig struct {
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// Throttle bounds full pushes in flight (see pushThrottle); nil means no bound.
	Throttle *pushThrottle
	// TrustDomain of the mesh's workload identities, checked in peers' certificates;
	// "" means xds.DefaultTrustDomain (cluster.local).
	TrustDomain string
	// ExtAuthzAddress is where sidecars reach the ext_authz server (palisade-agent on
	// their host), as IP:PORT; "" means xds.DefaultExtAuthzAddress (127.0.0.1:9191).
	// An invalid address is logged, and the default used.
	ExtAuthzAddress string
}

// Cache turns the current mesh snapshot into answers to xDS watches.
type Cache struct {
	log      *slog.Logger
	metrics  *Metrics
	throttle *pushThrottle
	opts     xds.Options

	mu      sync.Mutex
	state   *state
	watches map[*watch]struct{}
	changes map[viewKey][]changeRecord // recent changes per view, oldest first
}

// changeRecord is what one configuration change changed in a view.
type changeRecord struct {
	seq     uint64
	changed map[string]map[string]struct{}
	// serverListeners: every proxyless server listener may have changed (they are
	// made on request, so their names are not known).
	serverListeners bool
}

// changeHistory bounds the changes remembered per view; a delta client further
// behind is sent everything again.
const changeHistory = 64

func (c *Cache) recordChanges(k viewKey, seq uint64, changed map[string]map[string]struct{}, serverListeners bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	log := append(c.changes[k], changeRecord{seq, changed, serverListeners})
	if len(log) > changeHistory {
		log = slices.Clone(log[len(log)-changeHistory:])
	}
	c.changes[k] = log
}

// changedSince returns the names of a type changed in a view after generation base
// up to now, and whether every server listener may have changed, or false if some
// of those changes are not remembered.
func (c *Cache) changedSince(k viewKey, typeURL string, base, now uint64) (map[string]struct{}, bool, bool) {
	out := map[string]struct{}{}
	if base == now {
		return out, false, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	want := base + 1
	serverListeners := false
	for _, r := range c.changes[k] {
		if r.seq < want {
			continue
		}
		if r.seq != want {
			return nil, false, false // a gap
		}
		for name := range r.changed[typeURL] {
			out[name] = struct{}{}
		}
		serverListeners = serverListeners || (r.serverListeners && typeURL == resource.ListenerType)
		if want == now {
			return out, serverListeners, true
		}
		want++
	}
	return nil, false, false
}

// state is one snapshot and the translations made from it, created on demand.
type state struct {
	seq   uint64 // 1 for the first state, then +1 per snapshot
	snap  *mesh.Snapshot
	prev  atomic.Pointer[state] // the state before, until its successor is published
	mu    sync.Mutex
	views map[viewKey]*generated
}

// generated is the translation for one view, marshalled once and shared by all the
// proxies that have that view.
type generated struct {
	seq   uint64 // of the state it belongs to
	once  sync.Once
	done  chan struct{} // closed when generation is complete
	res   *xds.Resources
	memo  *xds.Memo                    // for the next version's translation of the view
	types map[string]map[string]*entry // type URL → name → entry

	// changed lists, by type, the resources added, changed or removed since the
	// previous state's translation of the same view. Nil when that translation was
	// not made: then every watch is evaluated in full.
	changed map[string]map[string]struct{}
	// serverListenersChanged: every server listener may differ from the previous
	// state's (the inbound policies changed); meaningful when changed is not nil.
	serverListenersChanged bool

	target          xds.Target // what server listeners are made for, and how
	opts            xds.Options
	serverMu        sync.Mutex
	serverListeners map[string]*entry // proxyless server listeners by requested name
}

// entry is one marshalled resource with its content version.
type entry struct {
	name    string
	version string
	any     *anypb.Any
	res     types.Resource // the message marshalled; a translator reusing it reuses the entry
}

// NewCache returns a cache that serves nothing until the first SetSnapshot.
func NewCache(cfg CacheConfig) *Cache {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opts := xds.Options{TrustDomain: cfg.TrustDomain, ExtAuthzAddress: cfg.ExtAuthzAddress}
	if err := opts.Validate(); err != nil {
		cfg.Logger.Error("invalid xDS translation option; using the default", "error", err, "default", xds.DefaultExtAuthzAddress)
		opts.ExtAuthzAddress = ""
	}
	return &Cache{
		log: cfg.Logger, metrics: cfg.Metrics, throttle: cfg.Throttle, opts: opts,
		watches: map[*watch]struct{}{}, changes: map[viewKey][]changeRecord{},
	}
}

var _ cache.Cache = (*Cache)(nil)

// SetSnapshot publishes a new snapshot and answers every open watch whose
// resources changed. Only the watches of types with changed resources do any work:
// the cost of a change grows with what it touches, not with the size of the mesh.
func (c *Cache) SetSnapshot(snap *mesh.Snapshot) {
	st := &state{snap: snap, views: map[viewKey]*generated{}, seq: 1}
	c.mu.Lock()
	if old := c.state; old != nil {
		st.seq = old.seq + 1
		st.prev.Store(old)
		old.prev.Store(nil) // keep one generation back, not a chain
	}
	c.state = st
	open := make([]*watch, 0, len(c.watches))
	for w := range c.watches {
		open = append(open, w)
	}
	c.mu.Unlock()
	for _, w := range open {
		c.evaluate(st, w)
	}
}

// Snapshot returns the snapshot being served, or nil.
func (c *Cache) Snapshot() *mesh.Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == nil {
		return nil
	}
	return c.state.snap
}

// Resources returns the generated configuration for a proxy, for debugging.
func (c *Cache) Resources(p *mesh.Proxy) (*xds.Resources, uint64, error) {
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	if st == nil {
		return nil, 0, errors.New("no configuration loaded yet")
	}
	return st.view(keyOf(st.snap, p), c).res, st.snap.Version, nil
}

func (st *state) view(k viewKey, c *Cache) *generated {
	st.mu.Lock()
	g := st.views[k]
	if g == nil {
		g = &generated{seq: st.seq, serverListeners: map[string]*entry{}, done: make(chan struct{})}
		st.views[k] = g
	}
	st.mu.Unlock()
	g.once.Do(func() {
		defer close(g.done)
		timer := c.metrics.startTranslation()
		var pg *generated // the previous version's translation, if made
		var memo *xds.Memo
		if prev := st.prev.Load(); prev != nil {
			if pg = prev.finishedView(k); pg != nil {
				memo = pg.memo
				g.changed = map[string]map[string]struct{}{}
			} else {
				// A new variant of a namespace and kind (a policy now selects other
				// workloads): a sibling's memo still spares what the variants share.
				memo = prev.siblingMemo(k)
			}
		}
		g.target, g.opts = k.target(st.snap), c.opts
		g.res, g.memo = xds.GenerateWith(st.snap.ViewFor(k.namespace), g.target, c.opts, memo)
		g.types = make(map[string]map[string]*entry, len(xds.TypeURLs))
		for _, typeURL := range xds.TypeURLs {
			m := map[string]*entry{}
			var was map[string]*entry
			if pg != nil {
				was = pg.types[typeURL]
			}
			changed := map[string]struct{}{}
			for _, r := range g.res.ByType(typeURL) {
				name := cache.GetResourceName(r)
				old := was[name]
				if old != nil && old.res == r {
					m[name] = old // the same message, reused by the translator
					continue
				}
				e, err := newEntry(typeURL, name, r)
				isNew := err == nil && (old == nil || old.version != e.version)
				if isNew {
					err = xds.Validate(r) // what did not change passed before
				}
				if err != nil {
					// A translator bug must cost one resource, not the proxy's config.
					c.log.Error("dropping invalid generated resource", "type", typeURL, "name", name, "error", err)
					c.metrics.invalidResource(typeURL)
					continue
				}
				if isNew {
					changed[name] = struct{}{}
				}
				m[name] = e
			}
			g.types[typeURL] = m
			if g.changed != nil {
				for name := range was {
					if m[name] == nil {
						changed[name] = struct{}{} // removed
					}
				}
				g.changed[typeURL] = changed
			}
		}
		if g.changed != nil {
			// Server listeners read the effective policy (and the key's TLS mode).
			g.serverListenersChanged = k.kind == mesh.KindProxyless && !g.target.Policies.Effective().Equal(pg.target.Policies.Effective())
			c.recordChanges(k, st.seq, g.changed, g.serverListenersChanged)
		}
		timer.done()
	})
	return g
}

// finishedView returns the view's translation if it was completed, or nil.
func (st *state) finishedView(k viewKey) *generated {
	st.mu.Lock()
	g := st.views[k]
	st.mu.Unlock()
	if g == nil {
		return nil
	}
	select {
	case <-g.done:
		return g
	default:
		return nil
	}
}

// siblingMemo returns the memo of a finished translation of another view of k's
// namespace and kind, or nil.
func (st *state) siblingMemo(k viewKey) *xds.Memo {
	st.mu.Lock()
	defer st.mu.Unlock()
	for sk, g := range st.views {
		if sk.namespace != k.namespace || sk.kind != k.kind {
			continue
		}
		select {
		case <-g.done:
			return g.memo
		default:
		}
	}
	return nil
}

// touches reports whether a change since the previous state may concern a
// subscription of the type.
func (g *generated) touches(typeURL string, sub cache.Subscription) bool {
	subscribed := sub.SubscribedResources()
	if typeURL == resource.ListenerType && g.serverListenersChanged {
		for name := range subscribed {
			if xds.IsServerListener(name) {
				return true
			}
		}
	}
	changed := g.changed[typeURL]
	if len(changed) == 0 {
		return false
	}
	if sub.IsWildcard() {
		return true
	}
	if len(subscribed) < len(changed) {
		for name := range subscribed {
			if _, ok := changed[name]; ok {
				return true
			}
		}
		return false
	}
	for name := range changed {
		if _, ok := subscribed[name]; ok {
			return true
		}
	}
	return false
}

var marshalOptions = proto.MarshalOptions{Deterministic: true}

func newEntry(typeURL, name string, r types.Resource) (*entry, error) {
	b, err := marshalOptions.Marshal(r)
	if err != nil {
		return nil, err
	}
	sum := xxhash.Sum64(b)
	return &entry{
		res:     r,
		name:    name,
		version: hashVersion(sum),
		any:     &anypb.Any{TypeUrl: typeURL, Value: b},
	}, nil
}

// lookup returns the resource of a type by name, including proxyless server
// listeners, which are made on request from the address in their name and the
// view's target.
func (g *generated) lookup(typeURL, name string, kind mesh.ProxyKind) *entry {
	if e := g.types[typeURL][name]; e != nil {
		return e
	}
	if typeURL != resource.ListenerType || kind != mesh.KindProxyless || !xds.IsServerListener(name) {
		return nil
	}
	g.serverMu.Lock()
	defer g.serverMu.Unlock()
	if e, ok := g.serverListeners[name]; ok {
		return e
	}
	var e *entry
	if l, err := xds.ProxylessServerListener(g.target, g.opts, name); err == nil {
		e, _ = newEntry(typeURL, name, l)
	}
	g.serverListeners[name] = e // nil is remembered too: a bad name stays bad
	return e
}

// selected returns the entries a subscription asks for, sorted by name.
func (g *generated) selected(typeURL string, sub cache.Subscription, kind mesh.ProxyKind) []*entry {
	var out []*entry
	if sub.IsWildcard() {
		for _, e := range g.types[typeURL] {
			out = append(out, e)
		}
	}
	for name := range sub.SubscribedResources() {
		if sub.IsWildcard() && g.types[typeURL][name] != nil {
			continue // already included
		}
		if e := g.lookup(typeURL, name, kind); e != nil {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	return out
}

// watch is an open request for one type on one stream.
type watch struct {
	proxy *mesh.Proxy
	sub   cache.Subscription

	sotw      *discovery.DiscoveryRequest
	sotwCh    chan cache.Response
	delta     *discovery.DeltaDiscoveryRequest
	deltaCh   chan cache.DeltaResponse
	mu        sync.Mutex
	responded bool    // or cancelled: the watch is spent
	evaluated uint64  // seq of the last state the watch was evaluated against
	key       viewKey // the proxy's view in that state
}

func (w *watch) nonce() string {
	if w.sotw != nil {
		return w.sotw.GetResponseNonce()
	}
	return w.delta.GetResponseNonce()
}

// request identifies the request a response answers, as the server callbacks see it.
func (w *watch) request() any {
	if w.sotw != nil {
		return w.sotw
	}
	return w.delta
}

func (w *watch) typeURL() string {
	if w.sotw != nil {
		return w.sotw.GetTypeUrl()
	}
	return w.delta.GetTypeUrl()
}

// CreateWatch implements cache.ConfigWatcher for state-of-the-world streams.
func (c *Cache) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	p, err := ProxyFromNode(req.GetNode())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return c.open(&watch{proxy: p, sub: sub, sotw: req, sotwCh: ch}), nil
}

// CreateDeltaWatch implements cache.ConfigWatcher for delta streams.
func (c *Cache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	p, err := ProxyFromNode(req.GetNode())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return c.open(&watch{proxy: p, sub: sub, delta: req, deltaCh: ch}), nil
}

// Fetch is the REST polling API, which Palisade does not serve.
func (c *Cache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, status.Error(codes.Unimplemented, "palisade serves xDS over ADS streams only")
}

func (c *Cache) open(w *watch) func() {
	c.mu.Lock()
	c.watches[w] = struct{}{}
	st := c.state
	c.mu.Unlock()
	switch {
	case st == nil:
	case w.nonce() == "":
		// A first request or a new subscription can mean a full push: it waits for a
		// slot so that a reconnecting fleet does not hold every push in memory at once.
		c.throttle.do(w.request(), func(slot *pushSlot) {
			c.mu.Lock()
			st := c.state // the newest, if the watch waited
			c.mu.Unlock()
			if !c.evaluate(st, w) {
				slot.release()
			}
		})
	default:
		c.evaluate(st, w)
	}
	return func() {
		w.mu.Lock()
		w.responded = true
		w.mu.Unlock()
		c.mu.Lock()
		delete(c.watches, w)
		c.mu.Unlock()
	}
}

// evaluate answers a watch if the client lacks what the state has for it, and
// reports whether it did. A watch already evaluated against the previous state is
// only looked at if the change touched its type and names.
func (c *Cache) evaluate(st *state, w *watch) bool {
	if !slices.Contains(xds.TypeURLs, w.typeURL()) {
		return false // a type we do not serve: leave the watch open, as the protocol allows
	}
	k := keyOf(st.snap, w.proxy)
	g := st.view(k, c)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.responded || w.evaluated >= st.seq {
		return false // spent, or already evaluated against this state or a newer one
	}
	// What changed in the view is what changed for the proxy only if the proxy had
	// the same view before (a policy change can move it to another).
	incremental := w.evaluated != 0 && w.evaluated == st.seq-1 && w.key == k && g.changed != nil
	w.evaluated, w.key = st.seq, k
	if incremental && !g.touches(w.typeURL(), w.sub) {
		return false
	}
	var sent bool
	if w.sotw != nil {
		sent = c.answerSotw(g, w)
	} else {
		sent = c.answerDelta(g, k, w)
	}
	if sent {
		w.responded = true
		c.mu.Lock()
		delete(c.watches, w)
		c.mu.Unlock()
	}
	return sent
}

// answerSotw sends the full set of requested resources unless the client has that
// exact set already or rejected it (a NACK is held until the content changes).
func (c *Cache) answerSotw(g *generated, w *watch) bool {
	typeURL := w.sotw.GetTypeUrl()
	entries := g.selected(typeURL, w.sub, w.proxy.Kind)
	version := sotwVersion(entries, w.sub)
	if version == w.sotw.GetVersionInfo() {
		return false
	}
	if w.sotw.GetErrorDetail() != nil && version == lastSentVersion(w.sub) {
		return false
	}
	resp := &discovery.DiscoveryResponse{VersionInfo: version, TypeUrl: typeURL, Resources: make([]*anypb.Any, len(entries))}
	returned := make(map[string]string, len(entries))
	for i, e := range entries {
		resp.Resources[i] = e.any
		returned[e.name] = version
	}
	w.sotwCh <- &cache.PassthroughResponse{Request: w.sotw, DiscoveryResponse: resp, ReturnedResources: returned}
	return true
}

// hashVersion spells a content hash as a version: 16 hex digits.
func hashVersion(sum uint64) string {
	return hex.EncodeToString(binary.BigEndian.AppendUint64(nil, sum))
}

// lastSentVersion is the version of the last SotW response on the stream: every
// resource of a SotW response is recorded with the response's version.
func lastSentVersion(sub cache.Subscription) string {
	for _, v := range sub.ReturnedResources() {
		return v
	}
	return ""
}

// sotwVersion identifies a response by its resources and by what was asked: a
// change of subscription is answered even when the content is the same, so that the
// client learns which of its names do not exist.
func sotwVersion(entries []*entry, sub cache.Subscription) string {
	h := xxhash.New()
	for _, e := range entries {
		_, _ = h.WriteString(e.name)
		_, _ = h.WriteString(e.version)
	}
	if !sub.IsWildcard() {
		names := mesh.SortedKeys(sub.SubscribedResources())
		_, _ = h.WriteString("\x00subscribed")
		for _, n := range names {
			_, _ = h.WriteString(n)
		}
	}
	return hashVersion(h.Sum64())
}

// deltaBaseKey is the entry of a delta stream's returned-resources map that names the
// generation (state seq) and the view variant (viewKey.variant, after a "|") whose
// versions the proxy has for every resource it subscribes to; other entries override
// it for one name. Resource names are never
// empty. One entry per stream and type, instead of one per resource, keeps a large
// fleet subscribed to a large mesh from holding a version map per proxy.
const deltaBaseKey = ""

// answerDelta sends the resources whose version differs from what the client has,
// and the removal of those it may have that no longer exist. A NACKed version counts
// as had: it is not resent until it changes. A client that has a generation of its
// view is answered from what changed since then alone, so a change costs each client
// the size of the change, not of its subscription.
func (c *Cache) answerDelta(g *generated, k viewKey, w *watch) bool {
	typeURL := w.delta.GetTypeUrl()
	had := c.deltaKnowledge(g, k, w, typeURL)
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typeURL}
	subscribed := w.sub.SubscribedResources()
	mayHave := had.mayHave()
	var entries []*entry
	if had.based && !had.staleServerListeners {
		for _, name := range mayHave {
			_, asked := subscribed[name]
			if e := g.lookup(typeURL, name, w.proxy.Kind); e != nil && (asked || w.sub.IsWildcard() && g.types[typeURL][name] != nil) {
				entries = append(entries, e)
			}
		}
	} else {
		entries = g.selected(typeURL, w.sub, w.proxy.Kind)
	}
	for _, e := range entries {
		if v, ok := had.version(e.name, e); !ok || v != e.version {
			resp.Resources = append(resp.Resources, &discovery.Resource{Name: e.name, Version: e.version, Resource: e.any})
		}
	}
	for _, name := range mayHave {
		if g.lookup(typeURL, name, w.proxy.Kind) != nil {
			continue
		}
		if _, ok := subscribed[name]; ok || w.sub.IsWildcard() {
			resp.RemovedResources = append(resp.RemovedResources, name)
		}
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
		return false
	}
	// The generation of the view the client then has, for /debug/syncz.
	generation := strconv.FormatUint(g.seq, 10) + "|" + k.variant()
	resp.SystemVersionInfo = generation
	next := map[string]string{deltaBaseKey: generation}
	w.deltaCh <- &cache.DeltaPassthroughResponse{DeltaRequest: w.delta, NextVersionMap: next, DeltaDiscoveryResponse: resp}
	return true
}

// deltaKnowledge is what a delta client has of one type.
type deltaKnowledge struct {
	returned map[string]string   // explicit versions (and the base entry)
	based    bool                // the client has the base generation for the rest
	stale    map[string]struct{} // changed since the base, or newly subscribed
	// staleServerListeners: every server listener may have changed since the base.
	staleServerListeners bool
}

func (c *Cache) deltaKnowledge(g *generated, vk viewKey, w *watch, typeURL string) deltaKnowledge {
	k := deltaKnowledge{returned: w.sub.ReturnedResources()}
	baseStr, ok := k.returned[deltaBaseKey]
	if !ok {
		return k
	}
	seq, variant, _ := strings.Cut(baseStr, "|")
	if variant != vk.variant() {
		return k // the client has another view's resources: resend everything
	}
	base, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return k
	}
	stale, serverListeners, ok := c.changedSince(vk, typeURL, base, g.seq)
	if !ok {
		return k // the changes since the base are no longer known: resend everything
	}
	// A name subscribed by this request is sent whatever the client had before it
	// unsubscribed, as the protocol asks.
	for _, name := range w.delta.GetResourceNamesSubscribe() {
		stale[name] = struct{}{}
	}
	k.based, k.stale, k.staleServerListeners = true, stale, serverListeners
	return k
}

// version returns the version the client has of a resource currently served as e.
func (k deltaKnowledge) version(name string, e *entry) (string, bool) {
	if v, ok := k.returned[name]; ok && name != deltaBaseKey {
		return v, true
	}
	if !k.based {
		return "", false
	}
	if _, stale := k.stale[name]; stale || (k.staleServerListeners && xds.IsServerListener(name)) {
		return "", false
	}
	return e.version, true // unchanged since the base, which the client has
}

// mayHave lists, sorted, the names the client may have that could have gone away.
func (k deltaKnowledge) mayHave() []string {
	names := make(map[string]struct{}, len(k.returned)+len(k.stale))
	for name := range k.returned {
		if name != deltaBaseKey {
			names[name] = struct{}{}
		}
	}
	for name := range k.stale {
		names[name] = struct{}{}
	}
	return mesh.SortedKeys(names)
}
