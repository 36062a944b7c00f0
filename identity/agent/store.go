package agent

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Store holds the identities the agent currently has and the trust bundles, and
// tells watchers when they change. Safe for concurrent use.
//
// Every change publishes a new immutable snapshot (copy-on-write), so readers
// take one atomic load and never contend with writers or each other. Values put
// in must not be mutated by the caller afterwards; the store derives the DER/PEM
// encodings once, at Set time, instead of on every request.
type Store struct {
	mu  sync.Mutex // serialises writers
	cur atomic.Pointer[state]
}

// state is one generation of the store. Nothing in it changes after publication
// except the lazily filled, generation-scoped memo of built responses.
type state struct {
	gen     uint64
	svids   map[spiffeid.ID]*svidEntry
	bundles *bundleState // nil until SetBundles
	// changed is closed when a newer generation replaces this one; a watcher
	// holding this state therefore cannot miss a change.
	changed chan struct{}
	// views memoises Workload API responses per identity set for this
	// generation only, so they need no invalidation.
	views sync.Map // string (identity set key) -> *x509View
}

// svidEntry is an SVID with its encodings, computed once per rotation.
type svidEntry struct {
	svid     *x509svid.SVID
	gen      uint64 // generation in which it was set: its version
	chainDER []byte // leaf first, concatenated
	chainPEM []byte
	keyDER   []byte // PKCS#8
	keyPEM   []byte
	keyErr   error // key not exportable (e.g. hardware-backed): cannot be served
}

// bundleState is one SetBundles call with its encodings.
type bundleState struct {
	set  *spiffebundle.Set
	gen  uint64
	tds  []spiffeid.TrustDomain // sorted
	byTD map[spiffeid.TrustDomain]*tdBundle
	jwt  *jwtbundle.Set // private copy used for ValidateJWTSVID

	// Workload API responses that depend on the bundles only, built on first use.
	x509Once sync.Once
	x509Resp *workload.X509BundlesResponse
	jwtOnce  sync.Once
	jwtResp  *workload.JWTBundlesResponse
}

type tdBundle struct {
	td       spiffeid.TrustDomain
	roots    []*x509.Certificate
	rootsDER []byte // concatenated DER, as the Workload API wants
	rootsPEM []byte
	jwks     []byte // JWT authorities only (spec: no keys with other uses)
	jwksErr  error
}

// NewStore returns an empty store.
func NewStore() *Store {
	s := &Store{}
	s.cur.Store(&state{svids: map[spiffeid.ID]*svidEntry{}, changed: make(chan struct{})})
	return s
}

func (s *Store) load() *state { return s.cur.Load() }

// publish installs next as the new generation and wakes the watchers of the
// previous one. Callers hold s.mu.
func (s *Store) publish(next *state) {
	prev := s.cur.Load()
	next.gen = prev.gen + 1
	next.changed = make(chan struct{})
	s.cur.Store(next)
	close(prev.changed)
}

// SetSVID adds svid or replaces the SVID with the same ID (rotation). A nil
// SVID or one without certificates is ignored.
func (s *Store) SetSVID(svid *x509svid.SVID) {
	if svid == nil || len(svid.Certificates) == 0 || svid.ID.IsZero() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.cur.Load()
	e := newSVIDEntry(svid, prev.gen+1)
	next := &state{svids: make(map[spiffeid.ID]*svidEntry, len(prev.svids)+1), bundles: prev.bundles}
	for id, old := range prev.svids {
		next.svids[id] = old
	}
	next.svids[svid.ID] = e
	s.publish(next)
}

// DeleteSVID removes the SVID for id, e.g. when the identity is no longer
// configured. Streams of callers that had only this identity are ended.
func (s *Store) DeleteSVID(id spiffeid.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.cur.Load()
	if _, ok := prev.svids[id]; !ok {
		return
	}
	next := &state{svids: make(map[spiffeid.ID]*svidEntry, len(prev.svids)), bundles: prev.bundles}
	for k, v := range prev.svids {
		if k != id {
			next.svids[k] = v
		}
	}
	s.publish(next)
}

// SetBundles replaces all trust bundles: the agent's own trust domain and the
// federated ones, each with X.509 and JWT authorities.
func (s *Store) SetBundles(set *spiffebundle.Set) {
	if set == nil {
		set = spiffebundle.NewSet()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.cur.Load()
	next := &state{svids: prev.svids, bundles: newBundleState(set, prev.gen+1)}
	s.publish(next)
}

// SVID returns the SVID for id, or nil.
func (s *Store) SVID(id spiffeid.ID) *x509svid.SVID {
	if e := s.load().svids[id]; e != nil {
		return e.svid
	}
	return nil
}

// Bundles returns the current trust bundle set, or nil before SetBundles.
func (s *Store) Bundles() *spiffebundle.Set {
	if b := s.load().bundles; b != nil {
		return b.set
	}
	return nil
}

// Generation counts changes; it grows by one on every Set or Delete.
func (s *Store) Generation() uint64 { return s.load().gen }

// Changed returns a channel that is closed at the next change after the call.
// Watchers re-read the store and call Changed again:
//
//	for {
//		ch := store.Changed()
//		use(store.SVID(id))
//		<-ch
//	}
func (s *Store) Changed() <-chan struct{} { return s.load().changed }

func newSVIDEntry(svid *x509svid.SVID, gen uint64) *svidEntry {
	e := &svidEntry{svid: svid, gen: gen}
	var der, chainPEM bytes.Buffer
	for _, c := range svid.Certificates {
		der.Write(c.Raw)
		_ = pem.Encode(&chainPEM, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	e.chainDER, e.chainPEM = der.Bytes(), chainPEM.Bytes()
	e.keyDER, e.keyErr = x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if e.keyErr == nil {
		e.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: e.keyDER})
	}
	return e
}

func newBundleState(set *spiffebundle.Set, gen uint64) *bundleState {
	b := &bundleState{set: set, gen: gen, byTD: map[spiffeid.TrustDomain]*tdBundle{}, jwt: jwtbundle.NewSet()}
	for _, sb := range set.Bundles() { // sorted by trust domain
		t := &tdBundle{td: sb.TrustDomain(), roots: sb.X509Authorities()}
		var der, p bytes.Buffer
		for _, c := range t.roots {
			der.Write(c.Raw)
			_ = pem.Encode(&p, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		t.rootsDER, t.rootsPEM = der.Bytes(), p.Bytes()
		jb := sb.JWTBundle() // a copy
		t.jwks, t.jwksErr = jb.Marshal()
		b.jwt.Add(jb)
		b.tds = append(b.tds, t.td)
		b.byTD[t.td] = t
	}
	return b
}
