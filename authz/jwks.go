package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// JWKSFetcherConfig configures a JWKSFetcher.
type JWKSFetcherConfig struct {
	Client *http.Client // default: one with a 10 s timeout
	// Refresh is how often every known JWKS is fetched again (default 20 minutes,
	// Istio's default).
	Refresh time.Duration
	// Retry is how soon a failed fetch is tried again (default 30 s).
	Retry time.Duration
	// MaxBytes bounds a JWKS document (default 1 MiB).
	MaxBytes int64
	// OnChange is called, from the fetcher's goroutine, when a JWKS is fetched for
	// the first time or changes: policies that use it must be rebuilt.
	OnChange func()
	Logger   *slog.Logger
}

// JWKSFetcher fetches the JWKS of RequestAuthentications' jwksUri, so that they
// reach the policy engine as data. A URI is fetched first when a policy asks for it;
// until then, and while fetches fail, its tokens are rejected (as Istio does).
type JWKSFetcher struct {
	cfg  JWKSFetcherConfig
	mu   sync.Mutex
	docs map[string]jwksDoc
	wake chan struct{}
}

type jwksDoc struct {
	jwks    string
	fetched bool      // a fetch has succeeded
	next    time.Time // when to fetch again
}

// NewJWKSFetcher returns a fetcher; Run fetches.
func NewJWKSFetcher(cfg JWKSFetcherConfig) *JWKSFetcher {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 20 * time.Minute
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 30 * time.Second
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &JWKSFetcher{cfg: cfg, docs: map[string]jwksDoc{}, wake: make(chan struct{}, 1)}
}

// JWKS returns the last JWKS fetched from uri. An unknown uri is queued for
// fetching, and ok is false until a fetch succeeds.
func (f *JWKSFetcher) JWKS(uri string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, known := f.docs[uri]
	if !known {
		f.docs[uri] = jwksDoc{}
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
	return d.jwks, d.fetched
}

// Run fetches due URIs until ctx ends.
func (f *JWKSFetcher) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-f.wake:
		}
		changed := false
		now := time.Now()
		for _, uri := range f.due(now) {
			changed = f.fetch(ctx, uri) || changed
		}
		if changed && f.cfg.OnChange != nil {
			f.cfg.OnChange()
		}
		timer.Reset(f.untilNext(time.Now()))
	}
}

func (f *JWKSFetcher) due(now time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var uris []string
	for uri, d := range f.docs {
		if !d.next.After(now) {
			uris = append(uris, uri)
		}
	}
	return uris
}

func (f *JWKSFetcher) untilNext(now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	wait := f.cfg.Refresh
	for _, d := range f.docs {
		wait = min(wait, max(d.next.Sub(now), 0))
	}
	return wait
}

// fetch fetches one URI and reports whether its JWKS changed.
func (f *JWKSFetcher) fetch(ctx context.Context, uri string) bool {
	jwks, err := f.get(ctx, uri)
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.docs[uri]
	if err != nil {
		f.cfg.Logger.Warn("fetching a JWKS failed; tokens of its issuer are rejected until a fetch succeeds", "uri", uri, "error", err)
		d.next = time.Now().Add(f.cfg.Retry)
		if d.fetched {
			d.next = time.Now().Add(min(f.cfg.Retry, f.cfg.Refresh))
		}
		f.docs[uri] = d
		return false
	}
	changed := !d.fetched || d.jwks != jwks
	f.docs[uri] = jwksDoc{jwks: jwks, fetched: true, next: time.Now().Add(f.cfg.Refresh)}
	return changed
}

func (f *JWKSFetcher) get(ctx context.Context, uri string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return "", err
	}
	resp, err := f.cfg.Client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.cfg.MaxBytes+1))
	if err != nil {
		return "", err
	}
	if int64(len(body)) > f.cfg.MaxBytes {
		return "", fmt.Errorf("the JWKS is larger than %d bytes", f.cfg.MaxBytes)
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("not a JWKS: %w", err)
	}
	if len(doc.Keys) == 0 {
		return "", errors.New("the JWKS has no keys")
	}
	return string(body), nil
}
