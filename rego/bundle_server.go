package rego

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Content types of bundle responses. OPA keeps long polling only while the
// server answers with BundleLongPollContentType; otherwise a bundle is gzip.
const (
	BundleContentType         = "application/gzip"
	BundleLongPollContentType = "application/vnd.openpolicyagent.bundles"
)

// BundleMaxLongPoll caps how long the server holds a long-poll request, whatever
// the client asks for; the client then simply asks again.
const BundleMaxLongPoll = 5 * time.Minute

// bundleNamePattern keeps names to one path segment, usable in a URL and a log.
var bundleNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// BundleServer serves bundles over OPA's bundle HTTP protocol, at
// GET /bundles/NAME (or NAME.tar.gz), to stock OPAs and Palisade's agent. The
// ETag is the bundle's revision, so a client that is current gets a 304; a
// client that sends "Prefer: wait=N" with its current ETag (OPA's long polling)
// is answered as soon as the bundle changes, or with a 304 after N seconds
// (at most BundleMaxLongPoll); such answers carry "Preference-Applied: wait=N".
// Mount it so that it sees the full path (no http.StripPrefix).
type BundleServer struct {
	mu      sync.RWMutex
	bundles map[string]*servedBundle
	closed  chan struct{}
	once    sync.Once
}

// servedBundle is immutable once published; Set replaces it and closes
// replaced, which wakes the long polls waiting on it.
type servedBundle struct {
	tarball  []byte
	revision string
	etag     string
	replaced chan struct{}
}

// NewBundleServer makes a server with no bundles; until Set, every name is 404.
func NewBundleServer() *BundleServer {
	return &BundleServer{bundles: map[string]*servedBundle{}, closed: make(chan struct{})}
}

// Set publishes a bundle under name, visible to the next request and to the
// long polls under way. Setting the revision already served does nothing, so
// palisaded may rebuild and Set on every configuration event.
func (s *BundleServer) Set(name string, tarball []byte, revision string) error {
	if !bundleNamePattern.MatchString(name) || strings.HasSuffix(name, ".tar.gz") {
		return fmt.Errorf("bundle server: invalid bundle name %q", name)
	}
	if revision == "" || strings.ContainsFunc(revision, func(r rune) bool { return r <= ' ' || r == '"' || r == ',' || r > '~' }) {
		return fmt.Errorf("bundle server: revision %q cannot be an ETag", revision)
	}
	next := &servedBundle{tarball: tarball, revision: revision, etag: `"` + revision + `"`, replaced: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.bundles[name]
	if prev != nil && prev.revision == revision {
		return nil
	}
	s.bundles[name] = next
	if prev != nil {
		close(prev.replaced)
	}
	return nil
}

// Close answers the long polls under way (304) and stops holding new ones, so
// that http.Server.Shutdown is not held up by them. Bundles are still served.
func (s *BundleServer) Close() {
	s.once.Do(func() { close(s.closed) })
}

func (s *BundleServer) current(name string) *servedBundle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.bundles[name]
}

// ServeHTTP implements http.Handler.
func (s *BundleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, "/bundles/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	name = strings.TrimSuffix(name, ".tar.gz")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	b := s.current(name)
	if b == nil {
		http.NotFound(w, r)
		return
	}
	inm := r.Header.Get("If-None-Match")
	wait, longPoll := preferWait(r.Header.Values("Prefer"))
	if longPoll {
		select {
		case <-s.closed:
			longPoll = false // tell the client to fall back to polling
		default:
		}
	}
	if longPoll && etagMatches(inm, b.revision) {
		timer := time.NewTimer(wait)
		defer timer.Stop()
	hold:
		for etagMatches(inm, b.revision) {
			select {
			case <-b.replaced:
				b = s.current(name)
			case <-timer.C:
				break hold
			case <-s.closed:
				break hold
			case <-r.Context().Done():
				return
			}
		}
	}

	h := w.Header()
	h.Set("ETag", b.etag)
	h.Set("Cache-Control", "no-cache")
	if longPoll {
		// OPA reads long-poll support from the Content-Type of a 200; Go's
		// server drops Content-Type from a 304, so RFC 7240's
		// Preference-Applied says it there (Palisade's client reads both).
		h.Set("Content-Type", BundleLongPollContentType)
		h.Set("Preference-Applied", "wait="+strconv.FormatInt(int64(wait/time.Second), 10))
	} else {
		h.Set("Content-Type", BundleContentType)
	}
	if etagMatches(inm, b.revision) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(b.tarball)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(b.tarball)
	}
}

// etagMatches reports whether an If-None-Match header names revision. OPA
// sends back the ETag it got (quoted), possibly followed by superseded ones;
// bare tokens are accepted too, for clients that strip the quotes.
func etagMatches(ifNoneMatch, revision string) bool {
	for tag := range strings.SplitSeq(ifNoneMatch, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" {
			return true
		}
		tag = strings.TrimPrefix(tag, "W/")
		if len(tag) >= 2 && tag[0] == '"' && tag[len(tag)-1] == '"' {
			tag = tag[1 : len(tag)-1]
		}
		if tag != "" && tag == revision {
			return true
		}
	}
	return false
}

// preferWait finds "wait=N" (seconds) in Prefer headers. OPA separates its
// preferences with ";" ("modes=snapshot,delta;wait=30"), RFC 7240 with ",".
func preferWait(prefer []string) (time.Duration, bool) {
	for _, v := range prefer {
		for pref := range strings.FieldsFuncSeq(v, func(r rune) bool { return r == ';' || r == ',' }) {
			k, val, ok := strings.Cut(strings.TrimSpace(pref), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "wait") {
				continue
			}
			n, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
			if err != nil || n <= 0 {
				return 0, false
			}
			return time.Duration(min(n, int64(BundleMaxLongPoll/time.Second))) * time.Second, true
		}
	}
	return 0, false
}
