package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/identity/agent"
	"github.com/palisade-mesh/palisade/identity/caserver"
)

// workloadsFile is the --workloads file: which Unix users and groups get which
// identity, when one agent serves several workloads.
//
//	workloads:
//	- spiffeID: spiffe://cluster.local/ns/shop/sa/reviews
//	  uid: 1001            # the caller's user ID, and/or
//	  gid: 1001            # its group ID
//	  tokenFile: /etc/palisade/tokens/reviews
//	  certDir: /var/lib/reviews/certs   # optional
type workloadsFile struct {
	Workloads []struct {
		SPIFFEID  string `json:"spiffeID"`
		UID       *int   `json:"uid,omitempty"`
		GID       *int   `json:"gid,omitempty"`
		TokenFile string `json:"tokenFile"`
		CertDir   string `json:"certDir,omitempty"`
	} `json:"workloads"`
}

// workload is one identity the agent keeps.
type workload struct {
	id      spiffeid.ID
	rule    agent.UnixRule
	token   func() (string, error)
	certDir string
}

// workloads returns the identities to keep: the one of --spiffe-id, or those of
// the --workloads file.
func (o options) workloads(td spiffeid.TrustDomain) ([]workload, error) {
	if o.workloadsFile == "" {
		if o.spiffeID == "" {
			return nil, errors.New("give --spiffe-id (one workload) or --workloads (several)")
		}
		id, err := caserver.WorkloadID(td, o.spiffeID)
		if err != nil {
			return nil, fmt.Errorf("--spiffe-id: %w", err)
		}
		return []workload{{id: id, token: tokenReader(o.tokenFile), certDir: o.certDir}}, nil
	}
	if o.spiffeID != "" || o.certDir != "" || o.tokenFile != "" {
		return nil, errors.New("--workloads excludes --spiffe-id, --token-file and --cert-dir: set them per workload in the file")
	}
	data, err := os.ReadFile(o.workloadsFile)
	if err != nil {
		return nil, fmt.Errorf("--workloads: %w", err)
	}
	var f workloadsFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("--workloads %s: %w", o.workloadsFile, err)
	}
	if len(f.Workloads) == 0 {
		return nil, fmt.Errorf("--workloads %s: no workloads", o.workloadsFile)
	}
	seen := map[spiffeid.ID]bool{}
	var out []workload
	for i, w := range f.Workloads {
		where := fmt.Sprintf("--workloads %s: workloads[%d]", o.workloadsFile, i)
		id, err := caserver.WorkloadID(td, w.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("%s.spiffeID: %w", where, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("%s.spiffeID: %s is listed twice", where, id)
		}
		seen[id] = true
		if w.UID == nil && w.GID == nil {
			return nil, fmt.Errorf("%s: give uid, gid or both", where)
		}
		if w.TokenFile == "" {
			return nil, fmt.Errorf("%s.tokenFile is required", where)
		}
		out = append(out, workload{id: id, rule: agent.UnixRule{UID: w.UID, GID: w.GID, ID: id}, token: tokenReader(w.TokenFile), certDir: w.CertDir})
	}
	return out, nil
}
