package identity

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestRotation walks a self-managed CA with a 1h CA TTL through a full rotation:
// prepare at 30m, activate at 45m, drop the old root at 60m, restarting the CA in
// each phase. The clock starts 50m in the past so that JWTs minted along the way
// are still valid in real time, which jwtsvid.ParseAndValidate uses.
func TestRotation(t *testing.T) {
	t0 := time.Now().Add(-50 * time.Minute)
	clock := newFakeClock(t0)
	ca, cfg := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = time.Hour })
	restart := func() {
		t.Helper()
		var err error
		if ca, err = NewCA(cfg); err != nil {
			t.Fatalf("restart: %v", err)
		}
	}
	csr := makeCSR(t, newP256(t), testID, nil)
	sign := func() []byte {
		t.Helper()
		chain, err := ca.SignX509SVID(csr, testID, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, verified, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(clock.Now()))
		if err != nil {
			t.Fatalf("fresh SVID does not verify: %v", err)
		}
		return verified[0][len(verified[0])-1].Raw // the root it chains to
	}
	kidOf := func(token string) string {
		t.Helper()
		tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		return tok.Headers[0].KeyID
	}
	mint := func(ttl time.Duration) string {
		t.Helper()
		token, _, err := ca.MintJWTSVID(testID, []string{"db"}, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return token
	}
	tick := func(at time.Duration) {
		t.Helper()
		clock.Set(t0.Add(at))
		if err := ca.Tick(); err != nil {
			t.Fatalf("Tick at +%v: %v", at, err)
		}
	}

	rootA := rootsOf(t, ca)[0]
	kidA := kidOf(mint(0))
	if seqOf(t, ca) != 1 {
		t.Errorf("initial sequence = %d, want 1", seqOf(t, ca))
	}

	// Before half-life nothing changes.
	changed := ca.Changed()
	tick(29 * time.Minute)
	if isClosed(changed) || len(rootsOf(t, ca)) != 1 || seqOf(t, ca) != 1 {
		t.Fatal("bundle changed before half-life")
	}

	// Half-life: the next root and JWT key are published but do not sign yet.
	tick(30 * time.Minute)
	if !isClosed(changed) {
		t.Error("Changed not closed when the next root was prepared")
	}
	roots := rootsOf(t, ca)
	if len(roots) != 2 || len(ca.Bundle().JWTAuthorities()) != 2 || seqOf(t, ca) != 2 {
		t.Fatalf("after prepare: %d roots, %d JWT keys, sequence %d; want 2, 2, 2", len(roots), len(ca.Bundle().JWTAuthorities()), seqOf(t, ca))
	}
	rootB := roots[slices.IndexFunc(roots, func(r []byte) bool { return !bytes.Equal(r, rootA) })]
	if got := sign(); !bytes.Equal(got, rootA) {
		t.Error("after prepare, SVIDs must still chain to the current root")
	}
	oldSVID, err := ca.SignX509SVID(csr, testID, 0)
	if err != nil {
		t.Fatal(err)
	}
	oldJWT := mint(30 * time.Minute)
	if kidOf(oldJWT) != kidA {
		t.Error("after prepare, JWTs must still be signed with the current key")
	}

	// A restart mid-rotation resumes the same roots and keys.
	bundle := ca.Bundle()
	clock.Set(t0.Add(31 * time.Minute))
	restart()
	if !ca.Bundle().Equal(bundle) {
		t.Fatal("restart after prepare changed the bundle")
	}

	// Three quarters: the next root signs; the old one is still trusted.
	changed = ca.Changed()
	tick(45 * time.Minute)
	if got := sign(); !bytes.Equal(got, rootB) {
		t.Error("after activation, SVIDs must chain to the new root")
	}
	if isClosed(changed) || seqOf(t, ca) != 2 {
		t.Error("activation changed the bundle; it only switches the signer")
	}
	if _, _, err := x509svid.Verify(oldSVID, ca.Bundle(), x509svid.WithTime(clock.Now())); err != nil {
		t.Errorf("SVID issued before activation no longer verifies: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(oldJWT, ca.Bundle(), []string{"db"}); err != nil {
		t.Errorf("JWT minted before activation no longer validates: %v", err)
	}
	newJWT := mint(30 * time.Minute)
	if kidOf(newJWT) == kidA {
		t.Error("after activation, JWTs are still signed with the old key")
	}
	if _, err := jwtsvid.ParseAndValidate(newJWT, ca.Bundle(), []string{"db"}); err != nil {
		t.Errorf("JWT minted after activation does not validate: %v", err)
	}

	clock.Set(t0.Add(46 * time.Minute))
	restart()
	if got := sign(); !bytes.Equal(got, rootB) {
		t.Error("after a restart, the activated root must keep signing")
	}

	// The old root's expiry removes it; the new root is now at its own half-life,
	// so the following slot is prepared in the same tick.
	changed = ca.Changed()
	tick(60 * time.Minute)
	if !isClosed(changed) || seqOf(t, ca) != 3 {
		t.Errorf("expiry of the old root: changed=%v sequence=%d, want a published change with sequence 3", isClosed(changed), seqOf(t, ca))
	}
	roots = rootsOf(t, ca)
	if slices.ContainsFunc(roots, func(r []byte) bool { return bytes.Equal(r, rootA) }) || !slices.ContainsFunc(roots, func(r []byte) bool { return bytes.Equal(r, rootB) }) || len(roots) != 2 {
		t.Error("after the old root expired the bundle must hold the active root and the newly prepared one only")
	}
	if _, ok := ca.Bundle().FindJWTAuthority(kidA); ok {
		t.Error("the old JWT key is still in the bundle after its slot expired")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "ca", "slot-1-root.key")); !os.IsNotExist(err) {
		t.Errorf("the expired slot's root key is still on disk (stat error %v)", err)
	}
}

func TestRotationAfterLongDowntime(t *testing.T) {
	t0 := time.Now()
	clock := newFakeClock(t0)
	ca, cfg := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = time.Hour })
	old := rootsOf(t, ca)[0]

	// Down for longer than the root lived: the restart must not sign with it.
	clock.Set(t0.Add(3 * time.Hour))
	ca, err := NewCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	roots := rootsOf(t, ca)
	if len(roots) != 1 || bytes.Equal(roots[0], old) {
		t.Fatalf("after downtime the bundle must hold only a fresh root")
	}
	chain, err := ca.SignX509SVID(makeCSR(t, newP256(t), testID, nil), testID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(clock.Now())); err != nil {
		t.Errorf("SVID after downtime: %v", err)
	}
	if seqOf(t, ca) != 2 {
		t.Errorf("sequence = %d, want 2 (one change since the first start)", seqOf(t, ca))
	}
}

func TestRunTicksAndStops(t *testing.T) {
	t0 := time.Now()
	clock := newFakeClock(t0)
	ca, _ := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = time.Hour })
	changed := ca.Changed()
	clock.Set(t0.Add(31 * time.Minute))

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ca.Run(ctx) }()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not prepare the next root")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v, want nil on cancellation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
}

func TestUntilNextEvent(t *testing.T) {
	// Whole seconds, so that the truncated slot expiry keeps thresholds exact.
	t0 := time.Now().Truncate(time.Second)
	clock := newFakeClock(t0)
	ca, _ := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = time.Hour })
	tests := []struct {
		at   time.Duration
		want time.Duration
	}{
		{0, time.Minute}, // preparation far away
		{30*time.Minute - 10*time.Second, 10 * time.Second}, // preparation soon
		{31 * time.Minute, time.Second},                     // overdue (no Tick yet): retry soon, no spin
	}
	for _, tt := range tests {
		clock.Set(t0.Add(tt.at))
		if got := ca.untilNextEvent(); got != tt.want {
			t.Errorf("at +%v: untilNextEvent = %v, want %v", tt.at, got, tt.want)
		}
	}
	if err := ca.Tick(); err != nil {
		t.Fatal(err)
	}
	clock.Set(t0.Add(45*time.Minute - 5*time.Second))
	if got := ca.untilNextEvent(); got != 5*time.Second {
		t.Errorf("before activation: untilNextEvent = %v, want 5s", got)
	}
}

// TestTickSaveFailure checks that a transition that cannot be saved is not served:
// the CA keeps the state that is on disk and retries on the next Tick.
func TestTickSaveFailure(t *testing.T) {
	t0 := time.Now()
	clock := newFakeClock(t0)
	ca, cfg := newTestCA(t, clock, func(c *CAConfig) { c.CATTL = time.Hour })
	dir := filepath.Join(cfg.DataDir, "ca")
	moved := dir + ".moved"
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil { // writes into dir now fail
		t.Fatal(err)
	}
	changed := ca.Changed()
	clock.Set(t0.Add(31 * time.Minute))
	if err := ca.Tick(); err == nil {
		t.Fatal("Tick succeeded although the state could not be saved")
	}
	if isClosed(changed) || len(rootsOf(t, ca)) != 1 || seqOf(t, ca) != 1 {
		t.Fatal("an unsaved transition was published")
	}

	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(moved, dir); err != nil {
		t.Fatal(err)
	}
	if err := ca.Tick(); err != nil {
		t.Fatalf("Tick after the disk recovered: %v", err)
	}
	if !isClosed(changed) || len(rootsOf(t, ca)) != 2 || seqOf(t, ca) != 2 {
		t.Error("the retried transition was not published")
	}
	restarted, err := NewCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !restarted.Bundle().Equal(ca.Bundle()) {
		t.Error("the saved state differs from the served one")
	}
}
