package rego

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// BundleClientConfig configures a BundleClient.
type BundleClientConfig struct {
	// URL of the bundle, e.g. https://palisaded:15012/bundles/palisade.
	URL string
	// HTTPClient carries the transport (TLS, proxies); default a plain
	// http.Client. Leave its Timeout at 0 when long polling: requests are
	// bounded by RequestTimeout instead.
	HTTPClient *http.Client
	// Verifier holds the keys bundles must be signed with. Required unless
	// InsecureSkipVerify, which accepts any bundle the URL serves.
	Verifier           *BundleVerifier
	InsecureSkipVerify bool
	// OnBundle activates a verified bundle; it is called from Run's goroutine,
	// once per new revision. An error leaves the bundle not taken: the client
	// logs it, backs off, and fetches it again.
	OnBundle func(BundleSnapshot) error
	// PollInterval is the wait between polls when the server does not long
	// poll (±10% jitter, so that a fleet does not poll in step); default 30s.
	PollInterval time.Duration
	// LongPollTimeout, when set, asks the server to hold each request up to
	// this long (whole seconds) until the bundle changes; servers that long
	// poll (BundleServer does) then deliver changes at once.
	LongPollTimeout time.Duration
	// RequestTimeout bounds a request beyond the long-poll wait; default 30s.
	RequestTimeout time.Duration
	// MaxBackoff bounds the wait between failed attempts; default 2m.
	MaxBackoff time.Duration
	// MaxBundleBytes refuses larger bundles; default 64 MiB.
	MaxBundleBytes int64
	// Logger gets activations and rejections; default slog.Default().
	Logger *slog.Logger
}

// BundleClient keeps Palisade's agent on palisaded's current policy bundle:
// it polls the bundle URL (conditionally, by ETag, and long polling when the
// server supports it), verifies each new bundle and hands it to OnBundle. A
// bundle that fails to download, verify or activate is logged and the previous
// one stays in force.
type BundleClient struct {
	cfg BundleClientConfig
}

// NewBundleClient checks cfg and fills in defaults; Run starts polling.
func NewBundleClient(cfg BundleClientConfig) (*BundleClient, error) {
	if cfg.URL == "" {
		return nil, errors.New("bundle client: no URL")
	}
	if cfg.OnBundle == nil {
		return nil, errors.New("bundle client: no OnBundle")
	}
	if cfg.Verifier == nil && !cfg.InsecureSkipVerify {
		return nil, errors.New("bundle client: no Verifier (set InsecureSkipVerify to accept unsigned bundles)")
	}
	if cfg.LongPollTimeout < 0 || (cfg.LongPollTimeout > 0 && cfg.LongPollTimeout < time.Second) {
		return nil, fmt.Errorf("bundle client: LongPollTimeout %v: want 0 or at least 1s", cfg.LongPollTimeout)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 30 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Minute
	}
	if cfg.MaxBundleBytes <= 0 {
		cfg.MaxBundleBytes = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &BundleClient{cfg: cfg}, nil
}

// Run polls until ctx ends, then returns nil.
func (c *BundleClient) Run(ctx context.Context) error {
	log := c.cfg.Logger.With("url", c.cfg.URL)
	var etag, revision string // of the bundle in force
	failures := 0
	for {
		res, err := c.fetch(ctx, etag)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil && res.bundle != nil && res.bundle.Revision == revision && revision != "" {
			etag = res.etag // the same bundle again (a server without ETags)
		} else if err == nil && res.bundle != nil {
			if err = c.cfg.OnBundle(*res.bundle); err != nil {
				err = fmt.Errorf("activating revision %s: %w", res.bundle.Revision, err)
			} else {
				log.Info("policy bundle activated", "revision", res.bundle.Revision, "previous", revision)
				etag, revision = res.etag, res.bundle.Revision
			}
		}
		var wait time.Duration
		switch {
		case err != nil:
			failures++
			wait = bundleBackoff(failures, min(c.cfg.PollInterval, time.Second), c.cfg.MaxBackoff)
			log.Warn("policy bundle not updated; keeping the current one", "revision", revision, "err", err, "retryIn", wait.Round(time.Millisecond))
		case res.longPolled:
			failures = 0 // the server held the request: ask again at once
		default:
			failures = 0
			wait = time.Duration(float64(c.cfg.PollInterval) * (0.9 + 0.2*rand.Float64()))
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

type bundleFetch struct {
	bundle     *BundleSnapshot // nil: not modified
	etag       string
	longPolled bool
}

// fetch asks for the bundle unless it is still etag, and verifies what comes.
func (c *BundleClient) fetch(ctx context.Context, etag string) (bundleFetch, error) {
	// Ask to long poll on every request, the first too: the server's answer
	// says whether it does, and so whether to ask again at once.
	asked := c.cfg.LongPollTimeout > 0
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout+c.cfg.LongPollTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.URL, nil)
	if err != nil {
		return bundleFetch{}, err
	}
	req.Header.Set("Accept", BundleContentType+", "+BundleLongPollContentType)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	if asked {
		req.Header.Set("Prefer", "wait="+strconv.FormatInt(int64(c.cfg.LongPollTimeout/time.Second), 10))
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return bundleFetch{}, err
	}
	defer resp.Body.Close()
	// Only a server that says it long polled may be asked again at once;
	// answering a server that ignores Prefer so would be a busy loop.
	longPolled := asked && (resp.Header.Get("Content-Type") == BundleLongPollContentType ||
		strings.HasPrefix(resp.Header.Get("Preference-Applied"), "wait="))

	switch resp.StatusCode {
	case http.StatusNotModified:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return bundleFetch{etag: etag, longPolled: longPolled}, nil
	case http.StatusOK:
	default:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return bundleFetch{}, fmt.Errorf("GET %s: %s", c.cfg.URL, resp.Status)
	}
	newTag := resp.Header.Get("ETag")
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxBundleBytes+1))
	if err != nil {
		return bundleFetch{}, fmt.Errorf("reading bundle: %w", err)
	}
	if int64(len(body)) > c.cfg.MaxBundleBytes {
		return bundleFetch{}, fmt.Errorf("bundle larger than %d bytes", c.cfg.MaxBundleBytes)
	}
	snap, err := readBundle(bytes.NewReader(body), c.cfg.Verifier, c.cfg.MaxBundleBytes)
	if err != nil {
		return bundleFetch{}, fmt.Errorf("rejected bundle (ETag %s): %w", newTag, err)
	}
	// A server without ETags makes every poll download the bundle again; Run
	// compares manifest revisions so that OnBundle does not see it twice.
	return bundleFetch{bundle: &snap, etag: newTag, longPolled: longPolled}, nil
}

// bundleBackoff doubles from base up to limit, with jitter in [50%, 100%].
func bundleBackoff(failures int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return time.Duration(float64(d) * (0.5 + 0.5*rand.Float64()))
}
