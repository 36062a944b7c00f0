package agent

import (
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestStoreSnapshotsAndChanged(t *testing.T) {
	ca := newTestCA(t, tdMain)
	s := NewStore()
	if s.Generation() != 0 || s.SVID(idA) != nil || s.Bundles() != nil {
		t.Fatal("new store not empty")
	}
	ch := s.Changed()
	before := s.load()
	a1 := ca.issue(t, idA)
	s.SetSVID(a1)
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by SetSVID")
	}
	if s.SVID(idA) != a1 || s.Generation() != 1 {
		t.Fatalf("SVID/generation after set: %v %d", s.SVID(idA), s.Generation())
	}
	// Copy-on-write: the earlier snapshot still has no SVID.
	if before.svids[idA] != nil {
		t.Fatal("old snapshot was mutated")
	}

	ch = s.Changed()
	a2 := ca.issue(t, idA)
	s.SetSVID(a2)
	<-ch
	if s.SVID(idA) != a2 {
		t.Fatal("SetSVID did not replace the SVID with the same ID")
	}

	// No-ops do not wake watchers.
	ch = s.Changed()
	s.SetSVID(nil)
	s.DeleteSVID(idB)
	select {
	case <-ch:
		t.Fatal("no-op woke watchers")
	default:
	}

	s.SetBundles(spiffebundleSet(t, ca))
	<-ch
	if s.Bundles() == nil || !s.Bundles().Has(tdMain) {
		t.Fatal("bundles not stored")
	}
	ch = s.Changed()
	s.DeleteSVID(idA)
	<-ch
	if s.SVID(idA) != nil {
		t.Fatal("DeleteSVID left the SVID")
	}
	if s.load().bundles == nil {
		t.Fatal("DeleteSVID dropped the bundles")
	}
}

// Concurrent writers and watchers: generations only grow and no change is
// lost (run with -race).
func TestStoreConcurrent(t *testing.T) {
	ca := newTestCA(t, tdMain)
	s := NewStore()
	const writers, each = 4, 50
	pool := make([][]*x509svid.SVID, writers)
	for w := range pool {
		for range each {
			pool[w] = append(pool[w], ca.issue(t, idA))
		}
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			last := uint64(0)
			for {
				st := s.load()
				if st.gen < last {
					t.Errorf("generation went back: %d < %d", st.gen, last)
					return
				}
				last = st.gen
				if e := st.svids[idA]; e != nil && len(e.chainDER) == 0 {
					t.Error("entry without encodings")
				}
				select {
				case <-st.changed:
				case <-stop:
					return
				}
			}
		}()
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, v := range pool[w] {
				s.SetSVID(v)
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	if got := s.Generation(); got != writers*each {
		t.Fatalf("generation %d, want %d", got, writers*each)
	}
}
