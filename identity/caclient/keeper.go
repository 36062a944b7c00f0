package caclient

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// KeeperConfig configures a Keeper.
type KeeperConfig struct {
	Client *Client
	ID     spiffeid.ID
	// Token returns the bootstrap token; it is asked for only when there is no
	// valid SVID to renew with (first start, or an SVID that expired while the CA
	// was unreachable). Reading it anew each time lets an operator replace it.
	Token func() (string, error)
	// TTL to ask for; 0 takes the CA's default.
	TTL time.Duration
	// OnSVID receives every new SVID; OnBundles every new set of trust bundles.
	// They are called from one goroutine at a time.
	OnSVID    func(*x509svid.SVID)
	OnBundles func(*spiffebundle.Set)
	Logger    *slog.Logger
	Now       func() time.Time
	// MaxBackoff bounds the wait between failed attempts, default 30s.
	MaxBackoff time.Duration
}

// Keeper keeps one identity's X.509-SVID valid: it obtains it, renews it at half
// of its lifetime, retries with backoff while the CA is unreachable (the current
// SVID stays in service until it expires), and follows the trust bundles.
type Keeper struct {
	cfg     KeeperConfig
	mu      sync.Mutex // serialises the callbacks
	current chan *x509svid.SVID
}

// NewKeeper makes a Keeper; Run starts it.
func NewKeeper(cfg KeeperConfig) *Keeper {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	return &Keeper{cfg: cfg, current: make(chan *x509svid.SVID, 1)}
}

// renewAt is half-way through the SVID's lifetime, counted from when it arrived:
// the CA backdates NotBefore for clock skew, which must not shorten the wait.
func renewAt(svid *x509svid.SVID, received time.Time) time.Time {
	return received.Add(svid.Certificates[0].NotAfter.Sub(received) / 2)
}

// Run keeps the SVID until ctx ends.
func (k *Keeper) Run(ctx context.Context) error {
	go k.watchBundles(ctx)
	var svid *x509svid.SVID
	failures := 0
	for {
		var next *x509svid.SVID
		var bundles *spiffebundle.Set
		var err error
		if svid == nil || !k.cfg.Now().Before(svid.Certificates[0].NotAfter) {
			next, bundles, err = k.obtain(ctx)
		} else {
			next, bundles, err = k.cfg.Client.Renew(ctx, svid, k.cfg.TTL)
		}
		var wait time.Duration
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			wait = backoff(failures, k.cfg.MaxBackoff)
			if svid != nil {
				wait = min(wait, max(svid.Certificates[0].NotAfter.Sub(k.cfg.Now()), time.Second))
			}
			k.cfg.Logger.Warn("SVID not renewed; retrying", "spiffeID", k.cfg.ID.String(), "err", err, "retryIn", wait.Round(time.Millisecond))
		} else {
			failures = 0
			svid = next
			k.publish(svid, bundles)
			now := k.cfg.Now()
			wait = renewAt(svid, now).Sub(now)
			k.cfg.Logger.Info("SVID issued", "spiffeID", svid.ID.String(), "notAfter", svid.Certificates[0].NotAfter, "renewIn", wait.Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (k *Keeper) obtain(ctx context.Context) (*x509svid.SVID, *spiffebundle.Set, error) {
	if k.cfg.Token == nil {
		return nil, nil, errors.New("no valid SVID and no bootstrap token")
	}
	token, err := k.cfg.Token()
	if err != nil {
		return nil, nil, err
	}
	return k.cfg.Client.SignWithToken(ctx, k.cfg.ID, token, k.cfg.TTL)
}

func (k *Keeper) publish(svid *x509svid.SVID, bundles *spiffebundle.Set) {
	k.mu.Lock()
	defer k.mu.Unlock()
	// Bundles first: a workload given the new SVID must also trust its issuer.
	if k.cfg.OnBundles != nil {
		k.cfg.OnBundles(bundles)
	}
	if k.cfg.OnSVID != nil {
		k.cfg.OnSVID(svid)
	}
	select { // keep only the newest for the bundle watcher
	case <-k.current:
	default:
	}
	k.current <- svid
}

// watchBundles follows the CA's bundles with the newest SVID, reconnecting with
// backoff; a renewal replaces the connection and so restarts the stream.
func (k *Keeper) watchBundles(ctx context.Context) {
	var svid *x509svid.SVID
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-k.current:
			svid = s
		}
		start := k.cfg.Now()
		err := k.cfg.Client.WatchBundles(ctx, svid, func(set *spiffebundle.Set) {
			k.mu.Lock()
			defer k.mu.Unlock()
			if k.cfg.OnBundles != nil {
				k.cfg.OnBundles(set)
			}
		})
		if ctx.Err() != nil {
			return
		}
		if k.cfg.Now().Sub(start) > time.Minute {
			failures = 0
		}
		failures++
		k.cfg.Logger.Debug("bundle stream ended", "err", err)
		// Put the SVID back unless a newer one is waiting, then pause.
		select {
		case k.current <- svid:
		default:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures, k.cfg.MaxBackoff)):
		}
	}
}

// backoff is exponential from 100 ms, with jitter, capped.
func backoff(failures int, limit time.Duration) time.Duration {
	d := 100 * time.Millisecond << min(failures-1, 16)
	d = min(d, limit)
	return d/2 + rand.N(d/2+1)
}
