package authz

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestJWKSFetcher(t *testing.T) {
	var body atomic.Value
	body.Store(`{"keys":[{"kty":"EC","kid":"1"}]}`)
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(body.Load().(string)))
	}))
	defer srv.Close()
	changes := make(chan struct{}, 10)
	f := NewJWKSFetcher(JWKSFetcherConfig{Refresh: 50 * time.Millisecond, Retry: 20 * time.Millisecond, OnChange: func() { changes <- struct{}{} }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Run(ctx)

	wait := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(5 * time.Second):
			t.Fatalf("no change notified: %s", what)
		}
	}
	if _, ok := f.JWKS(srv.URL); ok {
		t.Fatal("a JWKS was known before any fetch")
	}
	wait("first fetch")
	if got, ok := f.JWKS(srv.URL); !ok || !strings.Contains(got, `"kid":"1"`) {
		t.Fatalf("JWKS = %q, %v", got, ok)
	}
	body.Store(`{"keys":[{"kty":"EC","kid":"2"}]}`)
	wait("rotated keys")
	if got, _ := f.JWKS(srv.URL); !strings.Contains(got, `"kid":"2"`) {
		t.Fatalf("JWKS after rotation = %q", got)
	}
	// A failing server and then one serving garbage keep the last good JWKS.
	failing.Store(true)
	time.Sleep(150 * time.Millisecond)
	failing.Store(false)
	body.Store(`{"keys":[]}`)
	time.Sleep(150 * time.Millisecond)
	if got, ok := f.JWKS(srv.URL); !ok || !strings.Contains(got, `"kid":"2"`) {
		t.Fatalf("JWKS after failures = %q, %v; want the last good one", got, ok)
	}
	select {
	case <-changes:
		t.Fatal("a failed fetch was notified as a change")
	default:
	}
}

func TestJWKSFetcherRejects(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"not JSON": func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) },
		"no keys":  func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"keys":[]}`)) },
		"too large": func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"keys":[{"x":"` + strings.Repeat("a", 2<<10) + `"}]}`))
		},
		"status": func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) },
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(h)
			defer srv.Close()
			f := NewJWKSFetcher(JWKSFetcherConfig{MaxBytes: 1 << 10})
			if _, err := f.get(context.Background(), srv.URL); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
