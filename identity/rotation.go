package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"net/url"
	"slices"
	"time"
)

// Tick runs the rotation state machine at the clock's current time and persists and
// publishes any transition. It is safe to call at any time.
func (c *CA) Tick() error {
	c.tickMu.Lock()
	defer c.tickMu.Unlock()
	now := c.now()
	if c.plugged != nil {
		c.warnPluggedExpiry(now)
	}
	c.mu.RLock()
	st := c.st
	c.mu.RUnlock()
	st, changed, err := c.advance(st, now)
	if err != nil || !changed {
		return err
	}
	return c.commit(st)
}

// Run calls Tick every minute, or earlier when a transition is due, until ctx ends;
// then it returns nil. A failed Tick is logged and retried on the next round.
func (c *CA) Run(ctx context.Context) error {
	for {
		if err := c.Tick(); err != nil {
			c.log.Error("CA rotation failed; will retry", "error", err)
		}
		timer := time.NewTimer(c.untilNextEvent())
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// untilNextEvent is how long Run sleeps: a minute at most, so that clock jumps
// and failed ticks are caught up soon, and at least a second, so that a transition
// that keeps failing cannot spin.
func (c *CA) untilNextEvent() time.Duration {
	c.mu.RLock()
	st := c.st
	c.mu.RUnlock()
	next := st.current.prepareAt()
	if st.next != nil {
		next = st.current.activateAt()
	}
	for _, s := range st.retired {
		next = minTime(next, s.notAfter)
	}
	return min(max(next.Sub(c.now()), time.Second), time.Minute)
}

// advance applies every transition due at now to st and reports whether any was.
// Several may be due at once after a long downtime: the loop then prepares and
// activates fresh keys straight away rather than sign with expired ones.
func (c *CA) advance(st state, now time.Time) (state, bool, error) {
	changed := false
	for {
		cur := st.current
		// A self-managed CA whose current slot has no root (its state was written
		// while a plugged CA signed) must get one before it can sign.
		urgent := c.plugged == nil && cur.root == nil
		if st.next == nil && (urgent || !now.Before(cur.prepareAt())) {
			s, err := c.newSlot(st.nextID, now)
			if err != nil {
				return state{}, false, err
			}
			st.next, st.nextID = s, st.nextID+1
			c.log.Info("prepared next CA slot", "trust_domain", c.td.Name(), "slot", s.id, "expires", s.notAfter)
		} else if st.next != nil && (urgent || !now.Before(cur.activateAt())) {
			st.retired = append(slices.Clone(st.retired), cur)
			st.current, st.next = st.next, nil
			c.log.Info("activated CA slot", "trust_domain", c.td.Name(), "slot", st.current.id, "retired_slot", cur.id)
		} else {
			break
		}
		changed = true
	}
	kept := slices.DeleteFunc(slices.Clone(st.retired), func(s *slot) bool { return !now.Before(s.notAfter) })
	if len(kept) != len(st.retired) {
		c.log.Info("removed expired CA slots from the bundle", "trust_domain", c.td.Name(), "count", len(st.retired)-len(kept))
		st.retired, changed = kept, true
	}
	return st, changed, nil
}

// commit persists st and then publishes it. Persisting first means that a failed
// write leaves the CA serving the previous state, which is still the one on disk.
func (c *CA) commit(st state) error {
	bundle, digest := c.buildBundle(st)
	bundleChanged := digest != st.digest
	if bundleChanged {
		st.seq++
		st.digest = digest
	}
	bundle.SetSequenceNumber(st.seq)
	if err := saveJournal(c.dir, st); err != nil {
		return fmt.Errorf("save CA state: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st, c.bundle = st, bundle
	if bundleChanged {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return nil
}

// newSlot generates the keys of a slot valid from now for the CA TTL. Its NotAfter
// is truncated to whole seconds, the precision of certificate validity times, so
// that the slot and its root expire at the same instant.
func (c *CA) newSlot(id uint64, now time.Time) (*slot, error) {
	s := &slot{id: id, notBefore: now, notAfter: now.Add(c.caTTL).Truncate(time.Second)}
	var err error
	if s.jwtKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, fmt.Errorf("generate JWT key: %w", err)
	}
	kid := make([]byte, 16)
	if _, err := rand.Read(kid); err != nil {
		return nil, fmt.Errorf("generate JWT key ID: %w", err)
	}
	s.jwtKeyID = base64.RawURLEncoding.EncodeToString(kid)
	if c.plugged != nil {
		return s, nil
	}
	if s.rootKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"Palisade"}, CommonName: "Palisade CA " + c.td.Name()},
		URIs:         []*url.URL{c.td.ID().URL()},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     s.notAfter,
		IsCA:         true,
		// The root signs leaves directly; path length 0 forbids intermediates under it.
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &s.rootKey.PublicKey, s.rootKey)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	if s.root, err = x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("parse root certificate: %w", err)
	}
	s.leaf = newLeafProfile(s.root, s.rootKey)
	return s, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
