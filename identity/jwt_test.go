package identity

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// jwtsvid.ParseAndValidate checks expiry against the real clock, so JWT tests keep
// the fake clock at real time whenever they validate.

func TestMintJWTSVID(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(t, clock, nil)
	now := clock.Now()

	token, exp, err := ca.MintJWTSVID(testID, []string{"spiffe://example.org/ns/default/sa/db", "extra"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := now.Add(defaultJWTTTL).Truncate(time.Second); !exp.Equal(want) {
		t.Errorf("expiresAt = %v, want %v", exp, want)
	}
	svid, err := jwtsvid.ParseAndValidate(token, ca.Bundle(), []string{"extra"})
	if err != nil {
		t.Fatalf("ParseAndValidate: %v", err)
	}
	if svid.ID != testID || !svid.Expiry.Equal(exp) {
		t.Errorf("SVID = %v expiring %v, want %v expiring %v", svid.ID, svid.Expiry, testID, exp)
	}
	if iat, ok := svid.Claims["iat"].(float64); !ok || int64(iat) != now.Unix() {
		t.Errorf("iat = %v, want %d", svid.Claims["iat"], now.Unix())
	}

	parsed, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	h := parsed.Headers[0]
	if _, known := ca.Bundle().FindJWTAuthority(h.KeyID); !known || h.Algorithm != "ES256" || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Errorf("header kid=%q alg=%q typ=%v, want a bundle key, ES256, JWT", h.KeyID, h.Algorithm, h.ExtraHeaders[jose.HeaderType])
	}

	if _, err := jwtsvid.ParseAndValidate(token, ca.Bundle(), []string{"someone-else"}); err == nil {
		t.Error("token validated for an audience it was not minted for")
	}
	other, _ := newTestCA(t, clock, nil)
	if _, err := jwtsvid.ParseAndValidate(token, other.Bundle(), []string{"extra"}); err == nil {
		t.Error("token validated against another CA's bundle")
	}
}

func TestMintJWTSVIDRequests(t *testing.T) {
	clock := newFakeClock(time.Now())
	ca, _ := newTestCA(t, clock, nil)
	tests := []struct {
		name     string
		id       spiffeid.ID
		audience []string
		ttl      time.Duration
		want     time.Duration
		wantErr  error
	}{
		{name: "explicit TTL", id: testID, audience: []string{"a"}, ttl: time.Hour, want: time.Hour},
		{name: "clamped to max", id: testID, audience: []string{"a"}, ttl: 100 * time.Hour, want: defaultMaxSVIDTTL},
		{name: "below minimum", id: testID, audience: []string{"a"}, ttl: time.Second, wantErr: ErrInvalidTTL},
		{name: "no audience", id: testID, wantErr: ErrMissingAudience},
		{name: "empty audience", id: testID, audience: []string{"a", ""}, wantErr: ErrMissingAudience},
		{name: "foreign identity", id: spiffeid.RequireFromString("spiffe://other.org/x"), audience: []string{"a"}, wantErr: ErrIdentityMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, exp, err := ca.MintJWTSVID(tt.id, tt.audience, tt.ttl)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || token != "" {
					t.Fatalf("MintJWTSVID = %q, %v; want error %v", token, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := exp.Sub(clock.Now()); got <= tt.want-time.Second || got > tt.want {
				t.Errorf("lifetime = %v, want %v", got, tt.want)
			}
			if strings.Count(token, ".") != 2 {
				t.Errorf("token %q is not a compact JWS", token)
			}
		})
	}
}
