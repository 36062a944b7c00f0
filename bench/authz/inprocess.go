package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	opa "github.com/open-policy-agent/opa/v1/rego"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/rego"
)

// The in-process measurement (-serve inprocess, pinned to one CPU with
// GOMAXPROCS=1): single decisions of the mesh's policies as palisaded makes them
// when it does not log decisions (authz.Decide: the workload's native decision
// where it has one, else its compiled Rego or the library's on the parts of the
// input the query reads), timed one by one in one goroutine, for the small and jwt scenarios and for
// policygen's mesh of 100 policies. For comparison, the same with OPA-Envoy's way
// (authz.InputViaJSON and a straightforwardly prepared query).

// inProcessResult is one scenario's single-decision latencies.
type inProcessResult struct {
	Scenario, About string
	Way             string // "Palisade" or "OPA-Envoy"
	Decisions       int
	// Decision is the input mapping and the evaluation; Eval the evaluation alone
	// (for Palisade, whose native decisions read the CheckRequest, both).
	DecisionP50, DecisionP99, DecisionP999 time.Duration
	EvalP50, EvalP99, EvalP999             time.Duration
	Mean                                   time.Duration
	AllocsPerDecision, BytesPerDecision    float64
	Allowed, Denied, Mismatched            int
	MismatchedVariants                     []string `json:",omitempty"`
}

// inProcessScenarios are measured in process, whatever -scenarios says.
var inProcessScenarios = []string{"small", "jwt", "policies100"}

func runInProcess(testdata string, decisions int, budget time.Duration) error {
	var results []inProcessResult
	for _, name := range inProcessScenarios {
		sc, snapPolicy, err := inProcessScenario(name, testdata)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		engine := authz.NewEngine()
		if err := engine.Update(context.Background(), snapPolicy); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		pal := func(req *authv3.CheckRequest) (time.Duration, any, error) {
			t := time.Now()
			d := authz.Decide(context.Background(), engine.Current(), req)
			el := time.Since(t)
			if d.Failure != authz.FailureNone {
				return el, nil, fmt.Errorf("no decision: %s", d.Reason)
			}
			return el, map[string]any{"allowed": d.Allowed}, nil
		}
		q, err := prepareStraightforward(context.Background(), snapPolicy.Modules, snapPolicy.Data)
		if err != nil {
			return err
		}
		oe := func(req *authv3.CheckRequest) (time.Duration, any, error) {
			input, err := opaEnvoyInput(req)
			if err != nil {
				return 0, nil, err
			}
			t := time.Now()
			rs, err := q.Eval(context.Background(), opa.EvalInput(input))
			d := time.Since(t)
			if err != nil || len(rs) == 0 || len(rs[0].Expressions) == 0 {
				return d, nil, fmt.Errorf("no decision: %v", err)
			}
			return d, rs[0].Expressions[0].Value, nil
		}
		for _, way := range []struct {
			name   string
			decide func(*authv3.CheckRequest) (time.Duration, any, error)
		}{{"Palisade", pal}, {"OPA-Envoy", oe}} {
			r, err := timeDecisions(sc, way.decide, decisions, budget)
			if err != nil {
				return fmt.Errorf("%s, %s: %w", name, way.name, err)
			}
			r.Scenario, r.About, r.Way = name, sc.about, way.name
			results = append(results, r)
		}
	}
	results = append(results, machineBaseline(baselineWork, decisions, budget))
	return json.NewEncoder(os.Stdout).Encode(results)
}

// baselineWork is the median of the machine baseline: a third of the target p99.
const baselineWork = 15 * time.Microsecond

// machineBaseline times a fixed piece of work that neither allocates nor
// touches memory, calibrated to take work at the median, the same way as the
// decisions: how far this machine alone (interrupts, the hypervisor, other
// tenants) stretches the tail of something that always does the same.
func machineBaseline(work time.Duration, n int, budget time.Duration) inProcessResult {
	spin := func(iterations int) time.Duration {
		t := time.Now()
		x := uint64(1)
		for i := range iterations {
			x = x*6364136223846793005 + uint64(i)
		}
		d := time.Since(t)
		runtime.KeepAlive(x) // the loop is not optimized away
		return d
	}
	iterations := 1000
	for range 5 { // calibrate on the median of 201 runs
		ds := make([]time.Duration, 201)
		for i := range ds {
			ds[i] = spin(iterations)
		}
		slices.Sort(ds)
		iterations = max(1, int(float64(iterations)*float64(work)/float64(ds[100])))
	}
	ds := make([]time.Duration, 0, n)
	deadline := time.Now().Add(budget)
	for i := range n {
		ds = append(ds, spin(iterations))
		if i >= min(n, minDecisions) && time.Now().After(deadline) {
			break
		}
	}
	var total time.Duration
	for _, d := range ds {
		total += d
	}
	slices.Sort(ds)
	r := inProcessResult{Scenario: "baseline", About: fmt.Sprintf("fixed work, no allocation, calibrated to a %v median", work), Way: "machine", Decisions: len(ds),
		Mean: total / time.Duration(len(ds))}
	r.DecisionP50, r.DecisionP99, r.DecisionP999 = nearestRank(ds, 0.5), nearestRank(ds, 0.99), nearestRank(ds, 0.999)
	r.EvalP50, r.EvalP99, r.EvalP999 = r.DecisionP50, r.DecisionP99, r.DecisionP999
	return r
}

func inProcessScenario(name, testdata string) (*scenario, rego.Policy, error) {
	var sc *scenario
	var err error
	var snapPolicy rego.Policy
	if name == "policies100" {
		signer, err := policygen.NewSigner("bench")
		if err != nil {
			return nil, snapPolicy, err
		}
		set, err := policygen.Generate(generatedPolicies, signer)
		if err != nil {
			return nil, snapPolicy, err
		}
		sc = &scenario{name: name, variants: set.Variants, about: about(name, set.Snapshot)}
		snapPolicy, _ = authz.Policy(set.Snapshot, nil)
		return sc, snapPolicy, nil
	}
	sc, err = newScenario(name, testdata, "")
	if err != nil {
		return nil, snapPolicy, err
	}
	snap, err := loadSnapshot(sc.configDir)
	if err != nil {
		return nil, snapPolicy, err
	}
	snapPolicy, _ = authz.Policy(snap, nil)
	return sc, snapPolicy, nil
}

// minDecisions are timed (if n allows) even when they take longer than the budget.
const minDecisions = 2000

// timeDecisions makes n decisions (after a warm-up), or as many as the budget of
// time allows but at least minDecisions, cycling through the scenario's variants,
// and times each.
func timeDecisions(sc *scenario, decide func(*authv3.CheckRequest) (time.Duration, any, error), n int, budget time.Duration) (inProcessResult, error) {
	var r inProcessResult
	one := func(i int, record bool) (time.Duration, time.Duration, error) {
		v := sc.variants[i%len(sc.variants)]
		policygen.Renew(v.Request, uint64(i))
		t := time.Now()
		eval, result, err := decide(v.Request)
		d := time.Since(t)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", v.Name, err)
		}
		if record {
			m, _ := result.(map[string]any)
			allowed, _ := m["allowed"].(bool)
			if allowed {
				r.Allowed++
			} else {
				r.Denied++
			}
			if allowed != v.Allowed {
				r.Mismatched++
				if !slices.Contains(r.MismatchedVariants, v.Name) {
					r.MismatchedVariants = append(r.MismatchedVariants, v.Name)
				}
			}
		}
		return d, eval, nil
	}
	warmupEnd := time.Now().Add(time.Second)
	for i := range max(100, min(1000, n/10)) {
		if _, _, err := one(i, false); err != nil {
			return r, err
		}
		if i >= 100 && time.Now().After(warmupEnd) {
			break
		}
	}
	runtime.GC()
	dec := make([]time.Duration, 0, n)
	eval := make([]time.Duration, 0, n)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	deadline := time.Now().Add(budget)
	for i := range n {
		d, e, err := one(i, true)
		if err != nil {
			return r, err
		}
		dec, eval = append(dec, d), append(eval, e)
		if i >= min(n, minDecisions) && time.Now().After(deadline) {
			break
		}
	}
	runtime.ReadMemStats(&after)
	n = len(dec)
	var total time.Duration
	for _, d := range dec {
		total += d
	}
	slices.Sort(dec)
	slices.Sort(eval)
	r.Decisions = n
	r.DecisionP50, r.DecisionP99, r.DecisionP999 = nearestRank(dec, 0.5), nearestRank(dec, 0.99), nearestRank(dec, 0.999)
	r.EvalP50, r.EvalP99, r.EvalP999 = nearestRank(eval, 0.5), nearestRank(eval, 0.99), nearestRank(eval, 0.999)
	r.Mean = total / time.Duration(n)
	// Renew's and the bookkeeping's allocations are counted too (a few hundred
	// bytes): small next to a decision's.
	r.AllocsPerDecision = float64(after.Mallocs-before.Mallocs) / float64(n)
	r.BytesPerDecision = float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
	return r, nil
}
