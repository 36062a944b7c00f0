package identity

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrMissingAudience reports a JWT-SVID request without an audience: a token valid
// for anyone could be replayed to any service.
var ErrMissingAudience = errors.New("JWT-SVID needs at least one audience")

// MintJWTSVID signs a JWT-SVID for id (ES256, kid of the current JWT key, typ JWT;
// claims sub, aud, exp, iat). ttl <= 0 means the default JWT TTL, a ttl above the
// maximum is clamped, and the token never outlives its signing key's stay in the
// bundle. expiresAt is the exp claim.
func (c *CA) MintJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (token string, expiresAt time.Time, err error) {
	if len(audience) == 0 {
		return "", time.Time{}, ErrMissingAudience
	}
	if slices.Contains(audience, "") {
		return "", time.Time{}, fmt.Errorf("%w: empty audience value", ErrMissingAudience)
	}
	if !id.MemberOf(c.td) {
		return "", time.Time{}, fmt.Errorf("%w: %s is not in trust domain %s", ErrIdentityMismatch, id, c.td)
	}
	if ttl, err = c.effectiveTTL(ttl, c.jwtTTL); err != nil {
		return "", time.Time{}, err
	}
	now := c.now()
	c.mu.RLock()
	s := c.st.current
	c.mu.RUnlock()
	// exp has whole-second precision; truncating here makes expiresAt match it.
	exp := minTime(now.Add(ttl), s.notAfter).Truncate(time.Second)
	if !exp.After(now) {
		return "", time.Time{}, fmt.Errorf("JWT signing key expired at %s", s.notAfter.Format(time.RFC3339))
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: s.jwtKey, KeyID: s.jwtKeyID}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("create JWT signer: %w", err)
	}
	token, err = jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		Expiry:   jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(now),
	}).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign JWT-SVID: %w", err)
	}
	return token, exp, nil
}
