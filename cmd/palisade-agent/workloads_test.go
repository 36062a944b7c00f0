package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-mesh/palisade/identity/agent"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestWorkloadsFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "workloads.yaml")
	if err := os.WriteFile(file, []byte(`workloads:
- spiffeID: spiffe://cluster.local/ns/shop/sa/reviews
  uid: 1001
  tokenFile: /tokens/reviews
- spiffeID: spiffe://cluster.local/ns/shop/sa/ratings
  gid: 2002
  tokenFile: /tokens/ratings
  certDir: /certs/ratings
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ws, err := options{workloadsFile: file}.workloads(td)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || ws[0].id.Path() != "/ns/shop/sa/reviews" || ws[1].certDir != "/certs/ratings" {
		t.Fatalf("got %+v", ws)
	}
	// The rules attest by what each entry sets: uid 1001 gets reviews whatever its
	// group; gid 2002 gets ratings.
	rules := agent.ByUnixUser([]agent.UnixRule{ws[0].rule, ws[1].rule})
	if ids, _ := rules.Identities(agent.Caller{UID: 1001, GID: 7}); len(ids) != 1 || ids[0] != ws[0].id {
		t.Errorf("uid 1001 gets %v", ids)
	}
	if ids, _ := rules.Identities(agent.Caller{UID: 5, GID: 2002}); len(ids) != 1 || ids[0] != ws[1].id {
		t.Errorf("gid 2002 gets %v", ids)
	}
	if ids, _ := rules.Identities(agent.Caller{UID: 5, GID: 5}); len(ids) != 0 {
		t.Errorf("an unknown caller gets %v", ids)
	}
}

func TestWorkloadsErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		o    options
		file string
		want string
	}{
		"nothing":          {options{}, "", "--spiffe-id"},
		"other domain":     {options{spiffeID: "spiffe://example.org/ns/a/sa/b"}, "", "not in trust domain"},
		"not a workload":   {options{spiffeID: "spiffe://cluster.local/palisaded"}, "", "must have the form"},
		"both modes":       {options{spiffeID: "spiffe://cluster.local/ns/a/sa/b"}, "workloads: []", "excludes"},
		"empty":            {options{}, "workloads: []", "no workloads"},
		"unknown field":    {options{}, "workloads: [{spiffeID: spiffe://cluster.local/ns/a/sa/b, uid: 1, tokenFile: t, user: x}]", "unknown field"},
		"no uid or gid":    {options{}, "workloads: [{spiffeID: spiffe://cluster.local/ns/a/sa/b, tokenFile: t}]", "workloads[0]: give uid, gid or both"},
		"no token":         {options{}, "workloads: [{spiffeID: spiffe://cluster.local/ns/a/sa/b, uid: 1}]", "workloads[0].tokenFile is required"},
		"listed twice":     {options{}, "workloads: [{spiffeID: spiffe://cluster.local/ns/a/sa/b, uid: 1, tokenFile: t}, {spiffeID: spiffe://cluster.local/ns/a/sa/b, uid: 2, tokenFile: t}]", "workloads[1].spiffeID: spiffe://cluster.local/ns/a/sa/b is listed twice"},
		"bad id":           {options{}, "workloads: [{spiffeID: not-an-id, uid: 1, tokenFile: t}]", "workloads[0].spiffeID"},
		"missing file":     {options{workloadsFile: "/no/such/file"}, "", "no such file"},
		"token read later": {options{spiffeID: "spiffe://cluster.local/ns/a/sa/b"}, "", ""}, // from PALISADE_TOKEN, when needed
	} {
		t.Run(name, func(t *testing.T) {
			o := tc.o
			if tc.file != "" {
				o.workloadsFile = filepath.Join(t.TempDir(), "w.yaml")
				if err := os.WriteFile(o.workloadsFile, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := o.workloads(td)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestTokenReader(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("pal1.abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := tokenReader(file)(); err != nil || tok != "pal1.abc" {
		t.Errorf("token file: %q, %v", tok, err)
	}
	t.Setenv("PALISADE_TOKEN", "pal1.env")
	if tok, err := tokenReader("")(); err != nil || tok != "pal1.env" {
		t.Errorf("environment: %q, %v", tok, err)
	}
	t.Setenv("PALISADE_TOKEN", "")
	if _, err := tokenReader("")(); err == nil {
		t.Error("no token anywhere: want an error")
	}
}
