package identity

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// state is the CA's key material: the slot that signs, the prepared next one and
// retired ones that stay trusted until they expire. A state value is never mutated
// once published; transitions build a new one.
type state struct {
	current *slot
	next    *slot
	retired []*slot
	nextID  uint64
	seq     uint64 // bundle sequence number
	digest  string // of the bundle content seq was assigned to
}

// slot is one generation of CA keys. Its lifetime drives rotation and bounds how long
// its keys are trusted and how long what they sign may live.
type slot struct {
	id        uint64
	notBefore time.Time
	notAfter  time.Time
	root      *x509.Certificate // nil when a plugged CA signs X.509-SVIDs
	rootKey   *ecdsa.PrivateKey
	leaf      *leafProfile // of root and rootKey
	jwtKeyID  string
	jwtKey    *ecdsa.PrivateKey
}

func (s *slot) prepareAt() time.Time  { return s.notBefore.Add(s.notAfter.Sub(s.notBefore) / 2) }
func (s *slot) activateAt() time.Time { return s.notBefore.Add(s.notAfter.Sub(s.notBefore) * 3 / 4) }

// all returns the slots whose keys are trusted, newest last.
func (st state) all() []*slot {
	all := append(append([]*slot(nil), st.retired...), st.current)
	if st.next != nil {
		all = append(all, st.next)
	}
	return all
}

// The journal is DataDir/ca/state.json plus one file per key and root certificate.
// File names derive from the slot ID, so a tampered state.json cannot point the CA
// at files elsewhere. Writing state.json (atomically) is the commit point: slot files
// are written before it, and files it no longer names are removed after it.
const (
	journalFile    = "state.json"
	journalVersion = 1
	slotFilePrefix = "slot-"
)

type journalDoc struct {
	Version        int       `json:"version"`
	SequenceNumber uint64    `json:"sequence_number"`
	BundleDigest   string    `json:"bundle_digest"`
	NextSlotID     uint64    `json:"next_slot_id"`
	Slots          []slotDoc `json:"slots"`
}

type slotDoc struct {
	ID        uint64    `json:"id"`
	Status    string    `json:"status"` // "current", "next" or "retired"
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	HasRoot   bool      `json:"has_root"`
	JWTKeyID  string    `json:"jwt_key_id"`
}

func rootCertFile(id uint64) string { return fmt.Sprintf("%s%d-root.pem", slotFilePrefix, id) }
func rootKeyFile(id uint64) string  { return fmt.Sprintf("%s%d-root.key", slotFilePrefix, id) }
func jwtKeyFile(id uint64) string   { return fmt.Sprintf("%s%d-jwt.key", slotFilePrefix, id) }

// saveJournal persists st in dir. Slot files are rewritten on every save: saves are
// rare, and it makes a save after a failed one correct without tracking what the
// failed one got to write.
func saveJournal(dir string, st state) error {
	doc := journalDoc{
		Version:        journalVersion,
		SequenceNumber: st.seq,
		BundleDigest:   st.digest,
		NextSlotID:     st.nextID,
	}
	keep := map[string]bool{journalFile: true}
	write := func(name string, data []byte) error {
		keep[name] = true
		return writeFileAtomic(filepath.Join(dir, name), data, false)
	}
	for _, s := range st.all() {
		status := "retired"
		switch s {
		case st.current:
			status = "current"
		case st.next:
			status = "next"
		}
		doc.Slots = append(doc.Slots, slotDoc{
			ID: s.id, Status: status, NotBefore: s.notBefore, NotAfter: s.notAfter,
			HasRoot: s.root != nil, JWTKeyID: s.jwtKeyID,
		})
		if s.root != nil {
			keyPEM, err := encodeECKeyPEM(s.rootKey)
			if err != nil {
				return err
			}
			if err := write(rootCertFile(s.id), encodeCertPEM(s.root)); err != nil {
				return err
			}
			if err := write(rootKeyFile(s.id), keyPEM); err != nil {
				return err
			}
		}
		keyPEM, err := encodeECKeyPEM(s.jwtKey)
		if err != nil {
			return err
		}
		if err := write(jwtKeyFile(s.id), keyPEM); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("encode CA state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, journalFile), data, false); err != nil {
		return err
	}
	// Remove the keys of slots that are gone, and temporary files of interrupted
	// writes. Failing here leaves only garbage, so it does not fail the save.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		name := e.Name()
		if !keep[name] && (strings.HasPrefix(name, slotFilePrefix) || strings.HasPrefix(name, ".tmp-")) {
			os.Remove(filepath.Join(dir, name))
		}
	}
	return nil
}

// loadJournal reads the state saved in dir; found is false when there is none.
func loadJournal(dir string) (st state, found bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, journalFile))
	if errors.Is(err, os.ErrNotExist) {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, fmt.Errorf("read CA state: %w", err)
	}
	var doc journalDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return state{}, false, fmt.Errorf("read CA state %s: %w", filepath.Join(dir, journalFile), err)
	}
	if doc.Version != journalVersion {
		return state{}, false, fmt.Errorf("read CA state: unsupported version %d", doc.Version)
	}
	st = state{nextID: doc.NextSlotID, seq: doc.SequenceNumber, digest: doc.BundleDigest}
	for _, sd := range doc.Slots {
		s, err := loadSlot(dir, sd)
		if err != nil {
			return state{}, false, fmt.Errorf("read CA state: slot %d: %w", sd.ID, err)
		}
		if s.id >= st.nextID {
			return state{}, false, fmt.Errorf("read CA state: slot %d is not below next slot ID %d", s.id, st.nextID)
		}
		switch {
		case sd.Status == "current" && st.current == nil:
			st.current = s
		case sd.Status == "next" && st.next == nil:
			st.next = s
		case sd.Status == "retired":
			st.retired = append(st.retired, s)
		default:
			return state{}, false, fmt.Errorf("read CA state: slot %d: unexpected status %q", sd.ID, sd.Status)
		}
	}
	if st.current == nil {
		return state{}, false, errors.New("read CA state: no current slot")
	}
	return st, true, nil
}

func loadSlot(dir string, sd slotDoc) (*slot, error) {
	if sd.JWTKeyID == "" || !sd.NotBefore.Before(sd.NotAfter) {
		return nil, errors.New("incomplete slot record")
	}
	s := &slot{id: sd.ID, notBefore: sd.NotBefore, notAfter: sd.NotAfter, jwtKeyID: sd.JWTKeyID}
	var err error
	if s.jwtKey, err = readECKey(filepath.Join(dir, jwtKeyFile(sd.ID))); err != nil {
		return nil, err
	}
	if !sd.HasRoot {
		return s, nil
	}
	if s.rootKey, err = readECKey(filepath.Join(dir, rootKeyFile(sd.ID))); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, rootCertFile(sd.ID)))
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile(sd.ID), err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s: want one certificate, got %d", rootCertFile(sd.ID), len(certs))
	}
	s.root = certs[0]
	if !s.rootKey.PublicKey.Equal(s.root.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s", rootKeyFile(sd.ID), rootCertFile(sd.ID))
	}
	s.leaf = newLeafProfile(s.root, s.rootKey)
	return s, nil
}

func readECKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: want an ECDSA key, got %T", filepath.Base(path), key)
	}
	return ec, nil
}
