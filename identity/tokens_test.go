package identity

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func newTestTokens(t *testing.T, clock *fakeClock) (*Tokens, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "tokens.json")
	tokens, err := NewTokens(TokensConfig{Path: path, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return tokens, path
}

func TestTokensCreateRedeem(t *testing.T) {
	clock := newFakeClock(time.Now())
	tokens, path := newTestTokens(t, clock)

	token, exp, err := tokens.Create(testID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(token, "pal1.") || len(token) != len("pal1.")+43 || strings.ContainsAny(token, "+/=") {
		t.Errorf("token %q is not pal1. + 32 bytes of unpadded base64url", token)
	}
	if !exp.Equal(clock.Now().Add(time.Hour)) {
		t.Errorf("expiresAt = %v, want now+1h", exp)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("token file mode = %o, want 600", info.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), strings.TrimPrefix(token, "pal1.")) {
		t.Fatal("the state file contains the token")
	}

	id, err := tokens.Redeem(token)
	if err != nil || id != testID {
		t.Fatalf("Redeem = %v, %v; want %v", id, err, testID)
	}
	if _, err := tokens.Redeem(token); !errors.Is(err, ErrTokenUsed) || err.Error() != "token already used" {
		t.Errorf("second Redeem: %v, want ErrTokenUsed", err)
	}
	if _, err := tokens.Redeem("pal1.AAAA"); !errors.Is(err, ErrTokenUnknown) {
		t.Errorf("unknown token: %v, want ErrTokenUnknown", err)
	}
	if _, err := tokens.Redeem(""); !errors.Is(err, ErrTokenUnknown) {
		t.Errorf("empty token: %v, want ErrTokenUnknown", err)
	}

	expiring, _, err := tokens.Create(testID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Minute)
	if _, err := tokens.Redeem(expiring); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired token: %v, want ErrTokenExpired", err)
	}
}

func TestTokensPersist(t *testing.T) {
	clock := newFakeClock(time.Now())
	tokens, path := newTestTokens(t, clock)
	db := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/db")
	unused, _, err := tokens.Create(db, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	used, _, err := tokens.Create(testID, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	short, _, err := tokens.Create(testID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Redeem(used); err != nil {
		t.Fatal(err)
	}

	clock.Add(2 * time.Minute)
	again, err := NewTokens(TokensConfig{Path: path, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := again.Redeem(unused); err != nil || id != db {
		t.Errorf("token created before the restart: Redeem = %v, %v; want %v", id, err, db)
	}
	if _, err := again.Redeem(used); !errors.Is(err, ErrTokenUsed) {
		t.Errorf("token redeemed before the restart: %v, want ErrTokenUsed", err)
	}
	// Expired entries are dropped on load.
	if _, err := again.Redeem(short); !errors.Is(err, ErrTokenUnknown) {
		t.Errorf("token expired before the restart: %v, want ErrTokenUnknown", err)
	}

	// A used entry is kept until it expires, then pruned from the file.
	clock.Add(2 * time.Hour)
	if _, _, err := again.Create(testID, time.Hour); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), `"expires_at"`); n != 1 {
		t.Errorf("state file holds %d entries after expiry, want only the new one", n)
	}
}

func TestTokensCreateErrors(t *testing.T) {
	tokens, _ := newTestTokens(t, newFakeClock(time.Now()))
	tests := []struct {
		name string
		id   spiffeid.ID
		ttl  time.Duration
	}{
		{"zero TTL", testID, 0},
		{"negative TTL", testID, -time.Hour},
		{"TTL above 30 days", testID, MaxTokenTTL + time.Second},
		{"no identity", spiffeid.ID{}, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if token, _, err := tokens.Create(tt.id, tt.ttl); err == nil || token != "" {
				t.Errorf("Create = %q, %v; want an error", token, err)
			}
		})
	}
	if _, _, err := tokens.Create(testID, MaxTokenTTL); err != nil {
		t.Errorf("Create with the maximum TTL: %v", err)
	}
}

func TestTokensLoadErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	for _, content := range []string{"{", `{"version": 7, "tokens": {}}`} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewTokens(TokensConfig{Path: path}); err == nil {
			t.Errorf("NewTokens accepted %q", content)
		}
	}
	if _, err := NewTokens(TokensConfig{}); err == nil {
		t.Error("NewTokens accepted an empty path")
	}
}

// TestTokensRedeemOnce races redeemers of one token: exactly one may win.
func TestTokensRedeemOnce(t *testing.T) {
	tokens, _ := newTestTokens(t, newFakeClock(time.Now()))
	token, _, err := tokens.Create(testID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Go(func() {
			if _, err := tokens.Redeem(token); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d redeemers won, want 1", wins)
	}
}
