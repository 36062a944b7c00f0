// Package rego is the Go side of OPA in Palisade: it compiles the mesh's Rego library,
// users' modules and the policy data once, prepares the decision query, evaluates it
// per request, and builds and serves OPA bundles of the same policy.
package rego

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	opa "github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown/cache"
)

// Policy is everything a decision depends on: Rego modules by file name and the data
// document. It is plain data, so the same Policy feeds the engine and the bundles.
type Policy struct {
	Modules map[string]string
	Data    map[string]any
	// Queries are more decisions to prepare beside the engine's own, by name: the
	// compiled decisions of single workloads, each equal to the engine's query for
	// that workload's requests but cheaper to evaluate.
	Queries map[string]string
	// Native holds what the policy's owner evaluates itself, outside OPA, derived
	// from the same configuration as the modules and data (authz: decisions
	// compiled to Go). The engine only carries it, so that it swaps with them.
	Native   any
	Revision string // names this version in decision logs and bundles
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	// Query is the decision to evaluate, for example "data.palisade.mesh.decision".
	Query string
	// JWTCacheEntries bounds OPA's cache of verified JWTs shared across decisions
	// (io.jwt.decode_verify); 0 disables it.
	JWTCacheEntries int
	// InputUse, when set, turns what of the input each query can read (see
	// Prepared.InputPaths) into the caller's form of it, once per policy; the
	// caller reads it back with Prepared.InputUse, e.g. to build only those parts
	// of an input.
	InputUse func(paths []ast.Ref) any
}

// Engine holds the prepared decision query of the current policy. Update compiles a
// new policy and swaps it in atomically: a decision uses one Prepared from start to
// end, so no request sees half an update.
type Engine struct {
	cfg     EngineConfig
	current atomic.Pointer[Prepared]
	cache   cache.InterQueryValueCache
}

// NewEngine returns an engine without policy: until the first successful Update,
// Current returns nil and callers must deny.
func NewEngine(cfg EngineConfig) *Engine {
	e := &Engine{cfg: cfg}
	if cfg.JWTCacheEntries > 0 {
		n := cfg.JWTCacheEntries
		e.cache = cache.NewInterQueryValueCache(context.Background(), &cache.Config{
			InterQueryBuiltinValueCache: cache.InterQueryBuiltinValueCacheConfig{
				NamedCacheConfigs: map[string]*cache.NamedValueCacheConfig{"io_jwt": {MaxNumEntries: &n}},
			},
		})
	}
	return e
}

// Prepared is one compiled policy with its prepared queries. It is immutable.
type Prepared struct {
	Policy Policy
	query  opa.PreparedEvalQuery
	named  map[string]opa.PreparedEvalQuery
	cache  cache.InterQueryValueCache
	// What of the input each query can read: the engine's query's, and the named
	// ones', with the engine's InputUse of them.
	paths      []ast.Ref
	namedPaths map[string][]ast.Ref
	use        any
	namedUse   map[string]any
}

// Current returns the policy in force, or nil before the first successful Update.
func (e *Engine) Current() *Prepared { return e.current.Load() }

// Update compiles p and, if it compiles, makes it the policy in force. On error the
// previous policy stays in force and the error lists every problem with its file and
// line.
func (e *Engine) Update(ctx context.Context, p Policy) error {
	prep, err := Prepare(ctx, e.cfg.Query, p)
	if err != nil {
		return err
	}
	prep.cache = e.cache
	if e.cfg.InputUse != nil {
		prep.use = e.cfg.InputUse(prep.paths)
		prep.namedUse = make(map[string]any, len(prep.namedPaths))
		for name, paths := range prep.namedPaths {
			prep.namedUse[name] = e.cfg.InputUse(paths)
		}
	}
	e.current.Store(prep)
	return nil
}

// Prepare compiles a policy and prepares query against it.
func Prepare(ctx context.Context, query string, p Policy) (*Prepared, error) {
	modules := make(map[string]*ast.Module, len(p.Modules))
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(p.Modules)) {
		m, err := ast.ParseModuleWithOpts(name, p.Modules[name], ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		modules[name] = m
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	compiler := ast.NewCompiler().WithEnablePrintStatements(false)
	if compiler.Compile(modules); compiler.Failed() {
		return nil, compiler.Errors
	}
	store := inmem.NewFromObjectWithOpts(p.Data, inmem.OptRoundTripOnWrite(false), inmem.OptReturnASTValuesOnRead(true))
	prepare := func(query string) (opa.PreparedEvalQuery, error) {
		pq, err := opa.New(
			opa.Query(query),
			opa.Compiler(compiler),
			opa.Store(store),
			opa.StoreReadAST(true),
			opa.StrictBuiltinErrors(false),
		).PrepareForEval(ctx)
		if err != nil {
			return pq, fmt.Errorf("preparing %s: %w", query, err)
		}
		return pq, nil
	}
	prep := &Prepared{Policy: p, named: make(map[string]opa.PreparedEvalQuery, len(p.Queries)), namedPaths: make(map[string][]ast.Ref, len(p.Queries))}
	reads := inputReader{compiler: compiler, rules: map[*ast.Rule]ruleReads{}}
	var err error
	if prep.query, err = prepare(query); err != nil {
		return nil, err
	}
	if prep.paths, err = reads.paths(query); err != nil {
		return nil, err
	}
	for name, q := range p.Queries {
		if prep.named[name], err = prepare(q); err != nil {
			return nil, err
		}
		if prep.namedPaths[name], err = reads.paths(q); err != nil {
			return nil, err
		}
	}
	return prep, nil
}

// InputPaths returns what of the input the query EvalNamed(name) evaluates can
// read: the ground prefix of every reference to input in the query and in the
// rules it depends on, sorted. A path that is input itself means all of it. An
// input that has the same values at these paths gets the same result.
func (p *Prepared) InputPaths(name string) []ast.Ref {
	if paths, ok := p.namedPaths[name]; ok {
		return paths
	}
	return p.paths
}

// InputUse returns the engine's InputUse of InputPaths(name), or nil when the
// engine has none.
func (p *Prepared) InputUse(name string) any {
	if u, ok := p.namedUse[name]; ok {
		return u
	}
	return p.use
}

// inputReader finds the input references a query depends on, remembering each
// rule's own references across queries.
type inputReader struct {
	compiler *ast.Compiler
	rules    map[*ast.Rule]ruleReads
}

// ruleReads are a rule's (or a query's) references to input (ground prefixes)
// and the rules its references to data can reach.
type ruleReads struct {
	input []ast.Ref
	rules []*ast.Rule
}

func (r inputReader) of(x any) ruleReads {
	var out ruleReads
	ast.WalkRefs(x, func(ref ast.Ref) bool {
		switch {
		case ref.HasPrefix(ast.InputRootRef):
			out.input = append(out.input, ref.GroundPrefix())
		case ref.HasPrefix(ast.DefaultRootRef):
			// With variables in it, a reference can reach every rule under its
			// ground prefix; GetRulesDynamicWithOpts over-approximates so.
			out.rules = append(out.rules, r.compiler.GetRulesDynamicWithOpts(ref, ast.RulesOptions{})...)
		}
		return false // also the references inside this one
	})
	return out
}

func (r inputReader) paths(query string) ([]ast.Ref, error) {
	body, err := ast.ParseBody(query)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", query, err)
	}
	seen := map[*ast.Rule]bool{}
	found := map[string]ast.Ref{}
	pending := []ruleReads{r.of(body)}
	for len(pending) > 0 {
		reads := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		for _, path := range reads.input {
			found[path.String()] = path
		}
		for _, rule := range reads.rules {
			if seen[rule] {
				continue
			}
			seen[rule] = true
			rr, ok := r.rules[rule]
			if !ok {
				rr = r.of(rule)
				r.rules[rule] = rr
			}
			pending = append(pending, rr)
		}
	}
	paths := make([]ast.Ref, 0, len(found))
	for _, key := range slices.Sorted(maps.Keys(found)) {
		paths = append(paths, found[key])
	}
	return paths, nil
}

// ErrUndefined is returned when the decision is undefined: callers deny.
var ErrUndefined = errors.New("decision is undefined")

// Eval evaluates the decision for one input. It returns the decision as OPA's JSON
// form (map[string]any, []any, string, json.Number, bool, nil).
func (p *Prepared) Eval(ctx context.Context, input ast.Value) (any, error) {
	return p.eval(ctx, p.query, input)
}

// EvalNamed evaluates the named query of Policy.Queries, or the engine's own query
// when the policy has no query of that name.
func (p *Prepared) EvalNamed(ctx context.Context, name string, input ast.Value) (any, error) {
	if q, ok := p.named[name]; ok {
		return p.eval(ctx, q, input)
	}
	return p.eval(ctx, p.query, input)
}

func (p *Prepared) eval(ctx context.Context, q opa.PreparedEvalQuery, input ast.Value) (any, error) {
	opts := []opa.EvalOption{opa.EvalParsedInput(input)}
	if p.cache != nil {
		opts = append(opts, opa.EvalInterQueryBuiltinValueCache(p.cache))
	}
	rs, err := q.Eval(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, ErrUndefined
	}
	return rs[0].Expressions[0].Value, nil
}
