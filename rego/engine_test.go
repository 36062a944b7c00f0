package rego

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

const versioned = `package t

import rego.v1

# result pairs the module's version with the data's: a half-applied update would
# pair two different versions.
result := {"module": %d, "data": data.version}
`

func policyVersion(n int) Policy {
	return Policy{
		Modules:  map[string]string{"t.rego": fmt.Sprintf(versioned, n)},
		Data:     map[string]any{"version": n},
		Revision: fmt.Sprint(n),
	}
}

func TestEngineUpdateAndEval(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(EngineConfig{Query: "data.t.result"})
	if e.Current() != nil {
		t.Fatal("an engine without policy has a current policy")
	}
	if err := e.Update(ctx, policyVersion(1)); err != nil {
		t.Fatal(err)
	}
	got, err := e.Current().Eval(ctx, ast.NewObject())
	if err != nil {
		t.Fatal(err)
	}
	m := got.(map[string]any)
	if fmt.Sprint(m["module"]) != "1" || fmt.Sprint(m["data"]) != "1" {
		t.Fatalf("result = %v, want version 1 of module and data", m)
	}
}

func TestEngineKeepsLastGoodPolicy(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(EngineConfig{Query: "data.t.result"})
	if err := e.Update(ctx, policyVersion(1)); err != nil {
		t.Fatal(err)
	}
	for name, module := range map[string]string{
		"parse error":   "package t\n\nresult := {\n",
		"compile error": "package t\n\nresult := x if {\n\ty := 1\n}\n", // x is unsafe
	} {
		t.Run(name, func(t *testing.T) {
			err := e.Update(ctx, Policy{Modules: map[string]string{"bad/t.rego": module}, Revision: "bad"})
			if err == nil {
				t.Fatal("a broken module was accepted")
			}
			if !strings.Contains(err.Error(), "bad/t.rego:") {
				t.Errorf("error %q does not name the file and line", err)
			}
			if rev := e.Current().Policy.Revision; rev != "1" {
				t.Errorf("revision in force = %q, want the last good one", rev)
			}
		})
	}
}

func TestEngineUndefined(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(EngineConfig{Query: "data.t.missing"})
	if err := e.Update(ctx, policyVersion(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Current().Eval(ctx, ast.NewObject()); !errors.Is(err, ErrUndefined) {
		t.Fatalf("err = %v, want ErrUndefined", err)
	}
}

// TestEngineSwapIsAtomic evaluates while updates swap policies: every decision must
// see one policy's module and data together.
func TestEngineSwapIsAtomic(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(EngineConfig{Query: "data.t.result"})
	if err := e.Update(ctx, policyVersion(0)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := e.Current().Eval(ctx, ast.NewObject())
				if err != nil {
					errs <- err
					return
				}
				m := got.(map[string]any)
				if fmt.Sprint(m["module"]) != fmt.Sprint(m["data"]) {
					errs <- fmt.Errorf("decision mixed two policies: %v", m)
					return
				}
			}
		}()
	}
	for i := 1; i <= 30; i++ {
		if err := e.Update(ctx, policyVersion(i)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestEngineNamedQueries(t *testing.T) {
	ctx := context.Background()
	p := policyVersion(1)
	p.Modules["fast.rego"] = "package fast\n\nresult := {\"module\": \"fast\", \"data\": data.version}\n"
	p.Queries = map[string]string{"w1": "data.fast.result"}
	e := NewEngine(EngineConfig{Query: "data.t.result"})
	if err := e.Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"w1": "fast", "unknown": "1"} {
		got, err := e.Current().EvalNamed(ctx, name, ast.NewObject())
		if err != nil {
			t.Fatal(err)
		}
		if m := fmt.Sprint(got.(map[string]any)["module"]); m != want {
			t.Errorf("query %q answered from module %s, want %s", name, m, want)
		}
	}
	p.Queries["bad"] = "data.fast.result["
	if err := e.Update(ctx, p); err == nil {
		t.Error("a query that does not parse was accepted")
	}
}

// TestInputPaths: what of the input a query can read is found through rule
// references, function calls, else branches, comprehensions and references to
// data with variables in them; rules the query cannot reach do not count.
func TestInputPaths(t *testing.T) {
	ctx := context.Background()
	p := Policy{Modules: map[string]string{
		"a.rego": `package a

decision := {"x": input.a.b, "f": f("k"), "n": count([1 | some v in input.arr[_]; v])} if input.top.flag

f(k) := input.c[k]

g := 1 if input.never else := 2 if input.e.e1

h := data.b[input.which].v

direct := input

unrelated := input.g
`,
		"b.rego": `package b

one.v := input.f.g

two.v := 2
`,
	}, Queries: map[string]string{"h": "data.a.h", "g": "data.a.g", "all": "data.a.direct"}}
	var seen [][]ast.Ref
	e := NewEngine(EngineConfig{Query: "data.a.decision", InputUse: func(paths []ast.Ref) any {
		seen = append(seen, paths)
		return len(paths)
	}})
	if err := e.Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	prep := e.Current()
	for _, c := range []struct {
		name string
		want string
	}{
		{"", "[input.a.b input.arr input.c input.top.flag]"},
		{"unknown", "[input.a.b input.arr input.c input.top.flag]"}, // EvalNamed's fallback
		{"g", "[input.e.e1 input.never]"},
		{"h", "[input.f.g input.which]"},
		{"all", "[input]"},
	} {
		if got := fmt.Sprint(prep.InputPaths(c.name)); got != c.want {
			t.Errorf("InputPaths(%q) = %s, want %s", c.name, got, c.want)
		}
		if got := prep.InputUse(c.name); got != len(prep.InputPaths(c.name)) {
			t.Errorf("InputUse(%q) = %v, want the hook's value %d", c.name, got, len(prep.InputPaths(c.name)))
		}
	}
	if len(seen) != 4 {
		t.Errorf("InputUse called %d times, want once per query (4)", len(seen))
	}
}
