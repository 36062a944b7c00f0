package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bootstrap token errors returned by Redeem.
var (
	ErrTokenUnknown = errors.New("unknown token")
	ErrTokenUsed    = errors.New("token already used")
	ErrTokenExpired = errors.New("token expired")
)

const (
	// TokenPrefix starts every bootstrap token, so that secret scanners and people
	// can recognize one, and its format can change later.
	TokenPrefix = "pal1."
	// MaxTokenTTL is the longest a bootstrap token may stay valid.
	MaxTokenTTL = 30 * 24 * time.Hour

	tokensVersion = 1
)

// TokensConfig configures the bootstrap token store.
type TokensConfig struct {
	// Path of the JSON state file. It holds only SHA-256 hashes of tokens and is
	// written atomically with mode 0600. Required.
	Path string
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Tokens stores single-use bootstrap tokens that let a workload obtain its first
// SVID. It is safe for concurrent use.
type Tokens struct {
	path string
	now  func() time.Time

	// mu serializes every operation, including the file write, so that a token
	// is redeemed once even under concurrent requests.
	mu      sync.Mutex
	entries map[string]tokenEntry // by hex SHA-256 of the token
}

type tokenEntry struct {
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	Used      bool      `json:"used,omitempty"`
}

type tokensDoc struct {
	Version int                   `json:"version"`
	Tokens  map[string]tokenEntry `json:"tokens"`
}

// NewTokens loads the token store at cfg.Path (a missing file is an empty store) and
// drops expired entries.
func NewTokens(cfg TokensConfig) (*Tokens, error) {
	if cfg.Path == "" {
		return nil, errors.New("tokens config: path is required")
	}
	t := &Tokens{path: cfg.Path, now: cfg.Now, entries: map[string]tokenEntry{}}
	if t.now == nil {
		t.now = time.Now
	}
	data, err := os.ReadFile(cfg.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
			return nil, fmt.Errorf("create token directory: %w", err)
		}
		return t, nil
	case err != nil:
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	var doc tokensDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("read tokens %s: %w", cfg.Path, err)
	}
	if doc.Version != tokensVersion {
		return nil, fmt.Errorf("read tokens %s: unsupported version %d", cfg.Path, doc.Version)
	}
	if doc.Tokens != nil {
		t.entries = doc.Tokens
	}
	t.prune()
	return t, nil
}

// Create returns a new token that Redeem turns into id once, until expiresAt. The
// token is returned only here; the store keeps its hash.
func (t *Tokens) Create(id spiffeid.ID, ttl time.Duration) (token string, expiresAt time.Time, err error) {
	if id.IsZero() {
		return "", time.Time{}, errors.New("create token: SPIFFE ID is required")
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", time.Time{}, fmt.Errorf("create token: %w: %v is outside (0, %v]", ErrInvalidTTL, ttl, MaxTokenTTL)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", time.Time{}, fmt.Errorf("create token: %w", err)
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(secret)
	expiresAt = t.now().Add(ttl)

	t.mu.Lock()
	defer t.mu.Unlock()
	t.prune()
	key := tokenHash(token)
	t.entries[key] = tokenEntry{ID: id.String(), ExpiresAt: expiresAt}
	if err := t.save(); err != nil {
		delete(t.entries, key)
		return "", time.Time{}, err
	}
	return token, expiresAt, nil
}

// Redeem returns the identity token was created for and marks it used. The mark is
// on disk before Redeem returns, so a token never works twice, even across restarts.
// Expired entries are forgotten at the next write, after which they are unknown.
func (t *Tokens) Redeem(token string) (spiffeid.ID, error) {
	// Looking up the hash rather than the token keeps lookup timing unrelated to
	// how much of a guessed token is right.
	key := tokenHash(token)
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[key]
	switch {
	case !ok:
		return spiffeid.ID{}, ErrTokenUnknown
	case e.Used:
		return spiffeid.ID{}, ErrTokenUsed
	case !t.now().Before(e.ExpiresAt):
		return spiffeid.ID{}, ErrTokenExpired
	}
	id, err := spiffeid.FromString(e.ID)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("redeem token: stored identity: %w", err)
	}
	e.Used = true
	t.entries[key] = e
	t.prune()
	if err := t.save(); err != nil {
		// The caller gets no identity, so the token may be tried again.
		e.Used = false
		t.entries[key] = e
		return spiffeid.ID{}, err
	}
	return id, nil
}

func (t *Tokens) prune() {
	now := t.now()
	maps.DeleteFunc(t.entries, func(_ string, e tokenEntry) bool { return !now.Before(e.ExpiresAt) })
}

func (t *Tokens) save() error {
	data, err := json.MarshalIndent(tokensDoc{Version: tokensVersion, Tokens: t.entries}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode tokens: %w", err)
	}
	if err := writeFileAtomic(t.path, data, false); err != nil {
		return fmt.Errorf("save tokens: %w", err)
	}
	return nil
}

func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
