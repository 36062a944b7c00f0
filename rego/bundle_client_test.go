package rego

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-mesh/palisade/test/syncbuf"
)

// bundleCounter counts requests and 200 responses per ETag, and records the
// headers the client sent.
type bundleCounter struct {
	next     http.Handler
	requests atomic.Int64
	mu       sync.Mutex
	served   map[string]int // ETag → 200s
	prefer   []string
}

func newBundleCounter(next http.Handler) *bundleCounter {
	return &bundleCounter{next: next, served: map[string]int{}}
}

func (c *bundleCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.requests.Add(1)
	c.mu.Lock()
	c.prefer = append(c.prefer, r.Header.Get("Prefer"))
	c.mu.Unlock()
	rec := &bundleStatusRecorder{ResponseWriter: w}
	c.next.ServeHTTP(rec, r)
	if rec.status == http.StatusOK {
		c.mu.Lock()
		c.served[w.Header().Get("ETag")]++
		c.mu.Unlock()
	}
}

func (c *bundleCounter) servedCount(rev string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.served[`"`+rev+`"`]
}

func (c *bundleCounter) sawPrefer(sub string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.prefer {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}

type bundleStatusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *bundleStatusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *bundleStatusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func awaitBundleCond(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runBundleClient starts a client whose bundles arrive on the returned channel.
func runBundleClient(t *testing.T, cfg BundleClientConfig) (<-chan BundleSnapshot, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	got := make(chan BundleSnapshot, 10)
	if cfg.OnBundle == nil {
		cfg.OnBundle = func(s BundleSnapshot) error { got <- s; return nil }
	}
	c, err := NewBundleClient(cfg)
	if err != nil {
		t.Fatalf("NewBundleClient: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
		if t.Failed() {
			t.Logf("client logs:\n%s", logs.String())
		}
	})
	return got, logs
}

func nextBundle(t testing.TB, got <-chan BundleSnapshot, wantRev string) BundleSnapshot {
	t.Helper()
	select {
	case s := <-got:
		if s.Revision != wantRev {
			t.Fatalf("got revision %s, want %s", s.Revision, wantRev)
		}
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("no bundle %s within 10s", wantRev)
	}
	return BundleSnapshot{}
}

func noBundle(t testing.TB, got <-chan BundleSnapshot) {
	t.Helper()
	select {
	case s := <-got:
		t.Fatalf("unexpected bundle %s", s.Revision)
	default:
	}
}

func TestBundleClient(t *testing.T) {
	for _, tc := range []struct {
		name     string
		longPoll time.Duration
		interval time.Duration
	}{
		{"polling", 0, 20 * time.Millisecond},
		// A poll interval longer than the test: changes arrive by long polling.
		{"long polling", 30 * time.Second, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer := newTestSigner(t, "palisade", true)
			server := NewBundleServer()
			counter := newBundleCounter(server)
			hs := httptest.NewServer(counter)
			t.Cleanup(hs.Close)
			t.Cleanup(server.Close) // before hs.Close: ends held requests

			v1, rev1 := mustBuild(t, testBundleContents("alice"), signer)
			mustSet(t, server, "palisade", v1, rev1)
			got, logs := runBundleClient(t, BundleClientConfig{
				URL:             hs.URL + "/bundles/palisade",
				HTTPClient:      hs.Client(),
				Verifier:        verifierFor(t, signer),
				PollInterval:    tc.interval,
				LongPollTimeout: tc.longPoll,
			})
			s := nextBundle(t, got, rev1)
			if s.Modules["palisade/test.rego"] != testBundlePolicy || bundleJSON(t, s.Data) != bundleJSON(t, testBundleContents("alice").Data) {
				t.Errorf("first bundle: modules %v data %s", s.Modules, bundleJSON(t, s.Data))
			}

			v2, rev2 := mustBuild(t, testBundleContents("bob"), signer)
			mustSet(t, server, "palisade", v2, rev2)
			nextBundle(t, got, rev2)

			// Signed by another key: downloaded, rejected, logged; the client
			// keeps rev2 and keeps asking (with rev2's ETag).
			intruder := newTestSigner(t, "palisade", true)
			bad, badRev := mustBuild(t, testBundleContents("mallory"), intruder)
			mustSet(t, server, "palisade", bad, badRev)
			awaitBundleCond(t, "the client to fetch the bad bundle twice", 10*time.Second, func() bool { return counter.servedCount(badRev) >= 2 })
			noBundle(t, got)
			if !strings.Contains(logs.String(), "rejected bundle") || !strings.Contains(logs.String(), "revision="+rev2) {
				t.Errorf("rejection not logged with the revision kept:\n%s", logs.String())
			}

			v3, rev3 := mustBuild(t, testBundleContents("carol"), signer)
			mustSet(t, server, "palisade", v3, rev3)
			nextBundle(t, got, rev3)

			if tc.longPoll > 0 {
				if !counter.sawPrefer("wait=30") {
					t.Error("client never asked to long poll")
				}
				// Held, not hammering: a few requests per change.
				if n := counter.requests.Load(); n > 40 {
					t.Errorf("%d requests for 4 bundles while long polling", n)
				}
			} else if counter.sawPrefer("wait=") {
				t.Error("client asked to long poll without LongPollTimeout")
			}
			noBundle(t, got)
		})
	}
}

func TestBundleClientActivationError(t *testing.T) {
	signer := newTestSigner(t, "palisade", true)
	server := NewBundleServer()
	counter := newBundleCounter(server)
	hs := httptest.NewServer(counter)
	t.Cleanup(hs.Close)
	v1, rev1 := mustBuild(t, testBundleContents("alice"), signer)
	mustSet(t, server, "palisade", v1, rev1)

	var calls atomic.Int64
	activated := make(chan string, 10)
	runBundleClient(t, BundleClientConfig{
		URL:          hs.URL + "/bundles/palisade",
		Verifier:     verifierFor(t, signer),
		PollInterval: 10 * time.Millisecond,
		OnBundle: func(s BundleSnapshot) error {
			if calls.Add(1) < 3 {
				return errors.New("engine says no")
			}
			activated <- s.Revision
			return nil
		},
	})
	// Refused twice, then taken: an activation error means "fetch it again".
	select {
	case rev := <-activated:
		if rev != rev1 {
			t.Errorf("activated %s, want %s", rev, rev1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bundle never activated after OnBundle errors")
	}
	// Once taken, a current client gets 304s, and OnBundle is not called again.
	time.Sleep(100 * time.Millisecond)
	if n := calls.Load(); n != 3 {
		t.Errorf("OnBundle called %d times, want 3", n)
	}
	if n := counter.servedCount(rev1); n != 3 {
		t.Errorf("bundle downloaded %d times, want 3 (then 304s)", n)
	}
}

func TestBundleClientBackoffAndCancel(t *testing.T) {
	var requests atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(hs.Close)
	logs := &syncbuf.Buffer{}
	c, err := NewBundleClient(BundleClientConfig{
		URL:          hs.URL + "/bundles/palisade",
		Verifier:     verifierFor(t, newTestSigner(t, "palisade", true)),
		PollInterval: 10 * time.Millisecond,
		MaxBackoff:   80 * time.Millisecond,
		OnBundle:     func(BundleSnapshot) error { t.Error("OnBundle called"); return nil },
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run returned %v after its context ended", d-600*time.Millisecond)
	}
	// 10ms doubling to 80ms (jittered to 50–100%) over 600ms: more than a
	// handful, far fewer than polling every 10ms would make.
	if n := requests.Load(); n < 5 || n > 40 {
		t.Errorf("%d requests in 600ms of failures", n)
	}
	if !strings.Contains(logs.String(), "503") {
		t.Errorf("failures not logged:\n%s", logs.String())
	}

	// Cancel ends a long poll in flight.
	server := NewBundleServer()
	signer := newTestSigner(t, "palisade", true)
	v1, rev1 := mustBuild(t, testBundleContents("alice"), signer)
	mustSet(t, server, "palisade", v1, rev1)
	hs2 := httptest.NewServer(server)
	t.Cleanup(hs2.Close)
	got := make(chan BundleSnapshot, 1)
	c, err = NewBundleClient(BundleClientConfig{
		URL:             hs2.URL + "/bundles/palisade",
		Verifier:        verifierFor(t, signer),
		LongPollTimeout: time.Minute,
		OnBundle:        func(s BundleSnapshot) error { got <- s; return nil },
		Logger:          slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	nextBundle(t, got, rev1)
	time.Sleep(50 * time.Millisecond) // now held in a long poll
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return while long polling")
	}
}

func TestBundleBackoff(t *testing.T) {
	for failures, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		for range 20 {
			d := bundleBackoff(failures, 100*time.Millisecond, time.Second)
			if d < want/2 || d > want {
				t.Errorf("bundleBackoff(%d) = %v, want within [%v, %v]", failures, d, want/2, want)
			}
		}
	}
}

func TestNewBundleClientChecksConfig(t *testing.T) {
	v := verifierFor(t, newTestSigner(t, "k", true))
	on := func(BundleSnapshot) error { return nil }
	for name, cfg := range map[string]BundleClientConfig{
		"no URL":          {Verifier: v, OnBundle: on},
		"no callback":     {URL: "http://x/bundles/p", Verifier: v},
		"no verifier":     {URL: "http://x/bundles/p", OnBundle: on},
		"sub-second wait": {URL: "http://x/bundles/p", Verifier: v, OnBundle: on, LongPollTimeout: time.Millisecond},
	} {
		if _, err := NewBundleClient(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewBundleClient(BundleClientConfig{URL: "http://x/bundles/p", OnBundle: on, InsecureSkipVerify: true}); err != nil {
		t.Errorf("InsecureSkipVerify: %v", err)
	}
}
