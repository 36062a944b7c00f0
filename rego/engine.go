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
	Queries  map[string]string
	Revision string // names this version in decision logs and bundles
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	// Query is the decision to evaluate, for example "data.palisade.mesh.decision".
	Query string
	// JWTCacheEntries bounds OPA's cache of verified JWTs shared across decisions
	// (io.jwt.decode_verify); 0 disables it.
	JWTCacheEntries int
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
	prep := &Prepared{Policy: p, named: make(map[string]opa.PreparedEvalQuery, len(p.Queries))}
	var err error
	if prep.query, err = prepare(query); err != nil {
		return nil, err
	}
	for name, q := range p.Queries {
		if prep.named[name], err = prepare(q); err != nil {
			return nil, err
		}
	}
	return prep, nil
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
