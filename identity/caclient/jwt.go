package caclient

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// JWTCache mints JWT-SVIDs through the CA and reuses each one until half of its
// lifetime has passed, so workloads asking often cost the CA one call per token.
type JWTCache struct {
	// Client returns the CA client and current X.509-SVID of an identity (nil when
	// it has none yet).
	Client func(id spiffeid.ID) (*Client, *x509svid.SVID)
	Now    func() time.Time

	mu     sync.Mutex
	tokens map[string]cachedJWT
}

type cachedJWT struct {
	svid      *jwtsvid.SVID
	refreshAt time.Time
}

// FetchJWTSVID returns a JWT-SVID of id for the audience.
func (c *JWTCache) FetchJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (*jwtsvid.SVID, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	aud := slices.Clone(audience)
	slices.Sort(aud)
	key := id.String() + "\x00" + strings.Join(aud, "\x00")
	c.mu.Lock()
	cached, ok := c.tokens[key]
	c.mu.Unlock()
	if ok && now().Before(cached.refreshAt) {
		return cached.svid, nil
	}
	client, svid := c.Client(id)
	if client == nil || svid == nil {
		return nil, fmt.Errorf("no X.509-SVID for %s yet", id)
	}
	token, err := client.MintJWT(ctx, svid, audience, 0)
	if err != nil {
		return nil, err
	}
	t := now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens == nil {
		c.tokens = map[string]cachedJWT{}
	}
	for k, old := range c.tokens { // drop expired ones, so the map stays small
		if !t.Before(old.svid.Expiry) {
			delete(c.tokens, k)
		}
	}
	c.tokens[key] = cachedJWT{svid: token, refreshAt: t.Add(token.Expiry.Sub(t) / 2)}
	return token, nil
}
