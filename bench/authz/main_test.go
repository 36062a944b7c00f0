package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/bench/internal/proc"
)

// TestSmoke runs the whole benchmark with tiny settings: every server decides,
// Palisade and OPA-Envoy agree on every scenario, and the loads get both allowed and
// denied decisions.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds palisaded and runs the benchmark (about a minute)")
	}
	if _, err := proc.Taskset(); err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "authz-bench")
	build := exec.Command("go", "build", "-o", bin, "./bench/authz")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	resultsFile := filepath.Join(dir, "results.json")
	cmd := exec.CommandContext(ctx, bin, "-reps", "1", "-duration", "200ms", "-warmup", "50ms", "-concurrency", "1,4",
		"-verify-cycles", "2", "-decisions", "200", "-inprocess-time", "100ms", "-json", resultsFile)
	cmd.Dir = root
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("ran in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("authz-bench: %v", err)
	}
	bs, err := os.ReadFile(resultsFile)
	if err != nil {
		t.Fatal(err)
	}
	var res results
	if err := json.Unmarshal(bs, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Scenarios) != 2 {
		t.Fatalf("%d scenarios measured, want 2", len(res.Scenarios))
	}
	for _, sc := range res.Scenarios {
		byServer := map[string]counts{}
		for _, c := range sc.Verification {
			byServer[c.Server] = c
		}
		pal, oe := byServer[palisade], byServer[opaEnvoyS]
		if pal.Allowed != oe.Allowed || pal.Denied != oe.Denied {
			t.Errorf("%s: Palisade allowed %d, denied %d; OPA-Envoy allowed %d, denied %d", sc.Name, pal.Allowed, pal.Denied, oe.Allowed, oe.Denied)
		}
		if pal.Allowed == 0 || pal.Denied == 0 {
			t.Errorf("%s: Palisade allowed %d and denied %d: want both", sc.Name, pal.Allowed, pal.Denied)
		}
		made := map[string]int64{}
		allowed, denied := map[string]int64{}, map[string]int64{}
		for _, r := range append(sc.Runs, sc.DecisionLogRuns...) {
			if r.Decisions == 0 {
				t.Errorf("%s: %s, %d callers: no decision", sc.Name, r.Server, r.Callers)
			}
			made[r.Server] += r.Decisions
			allowed[r.Server] += r.Allowed
			denied[r.Server] += r.Denied
		}
		for _, s := range []string{palisade, opaEnvoyS, floor, palisadeLog} {
			if made[s] == 0 {
				t.Errorf("%s: %s made no decision", sc.Name, s)
			}
		}
		for _, s := range []string{palisade, opaEnvoyS, palisadeLog} {
			if allowed[s] == 0 || denied[s] == 0 {
				t.Errorf("%s: %s allowed %d and denied %d under load: want both", sc.Name, s, allowed[s], denied[s])
			}
		}
	}
	if len(res.InProcess) == 0 {
		t.Error("no in-process results")
	}
	if i := slices.IndexFunc(res.InProcess, func(r inProcessResult) bool { return r.Scenario == "baseline" }); i < 0 {
		t.Error("no machine baseline among the in-process results")
	} else if b := res.InProcess[i]; b.Decisions == 0 || b.DecisionP50 <= 0 || b.DecisionP99 < b.DecisionP50 {
		t.Errorf("machine baseline: %d runs, p50 %v, p99 %v", b.Decisions, b.DecisionP50, b.DecisionP99)
	}
	for _, p := range res.Problems {
		t.Errorf("decision not as the scenario intends: %s", p)
	}
}

// TestJWKSMatchesKey: the JWKS inline in testdata/jwt is that of the key the
// benchmark signs with.
func TestJWKSMatchesKey(t *testing.T) {
	snap, err := loadSnapshot("testdata/jwt")
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile("testdata/jwt-signing-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := policygen.ParseSigner(pemBytes, "bench")
	if err != nil {
		t.Fatal(err)
	}
	var got, want any
	if err := json.Unmarshal([]byte(snap.RequestAuthentications[0].Spec.GetJwtRules()[0].GetJwks()), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(signer.JWKS()), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("testdata/jwt's JWKS is\n%v\nthe key's is\n%v", got, want)
	}
}

// TestDecisionResponse: OPA-Envoy's reading of decisions.
func TestDecisionResponse(t *testing.T) {
	for _, c := range []struct {
		v       any
		allowed bool
		status  int
	}{
		{true, true, 200},
		{false, false, 403},
		{map[string]any{"allowed": true, "headers": map[string]any{"x-a": "1"}}, true, 200},
		{map[string]any{"allowed": false, "http_status": json.Number("401")}, false, 401},
		{map[string]any{"allowed": false}, false, 403},
		{"yes", false, 403},
	} {
		allowed, status := decisionOf(decisionResponse(c.v))
		if allowed != c.allowed || status != c.status {
			t.Errorf("%v: allowed %v, status %d; want %v, %d", c.v, allowed, status, c.allowed, c.status)
		}
	}
}

// TestScenarios: every scenario loads, with allowed and denied variants, and the
// load generator's expectations round-trip.
func TestScenarios(t *testing.T) {
	for _, name := range scenarioNames {
		sc, err := newScenario(name, "testdata", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		var allowed []bool
		for _, v := range sc.variants {
			allowed = append(allowed, v.Allowed)
		}
		if !slices.Contains(allowed, true) || !slices.Contains(allowed, false) {
			t.Errorf("%s: want allowed and denied variants", name)
		}
		exp, err := parseExpect(expectString(allowed), len(allowed))
		if err != nil {
			t.Fatal(err)
		}
		for i, a := range allowed {
			if (exp[i] == 1) != a {
				t.Errorf("%s: expectation %d does not round-trip", name, i)
			}
		}
	}
}
