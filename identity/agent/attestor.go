package agent

import (
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Attestor decides which identities a caller may get. The first identity is the
// caller's default (the first X.509-SVID of the Workload API, the one SDS
// serves). A nil error with no identities means the caller gets none
// (PermissionDenied). It is called on every request, not cached per connection,
// so rule changes apply to the next request.
type Attestor interface {
	Identities(c Caller) ([]spiffeid.ID, error)
}

// AttestorFunc adapts a function to Attestor.
type AttestorFunc func(c Caller) ([]spiffeid.ID, error)

// Identities implements Attestor.
func (f AttestorFunc) Identities(c Caller) ([]spiffeid.ID, error) { return f(c) }

// AllowAll gives every caller that can reach the socket the one identity: one
// agent per pod, where the socket's mount is the access control.
func AllowAll(id spiffeid.ID) Attestor { return allowAll{ids: []spiffeid.ID{id}} }

type allowAll struct{ ids []spiffeid.ID }

func (a allowAll) Identities(Caller) ([]spiffeid.ID, error) { return a.ids, nil }

// UnixRule grants ID to callers whose uid and/or gid match. A nil field matches
// any value, so a rule with neither set matches every caller. GID is the
// caller's primary group as SO_PEERCRED reports it; supplementary groups are
// not seen.
type UnixRule struct {
	UID *int
	GID *int
	ID  spiffeid.ID
}

func (r UnixRule) matches(c Caller) bool {
	return (r.UID == nil || *r.UID == c.UID) && (r.GID == nil || *r.GID == c.GID)
}

// ByUnixUser maps Unix users and groups to identities, for one agent on a VM or
// node serving several workloads. A caller gets the identities of every rule it
// matches, in rule order, without duplicates.
func ByUnixUser(rules []UnixRule) Attestor {
	return byUnixUser{rules: append([]UnixRule(nil), rules...)}
}

type byUnixUser struct{ rules []UnixRule }

func (a byUnixUser) Identities(c Caller) ([]spiffeid.ID, error) {
	var ids []spiffeid.ID
	for _, r := range a.rules {
		if r.matches(c) && !slices.Contains(ids, r.ID) {
			ids = append(ids, r.ID)
		}
	}
	return ids, nil
}
