package authz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/palisade-mesh/palisade/rego"
)

// DecisionQuery is the rule every Palisade decision evaluates.
const DecisionQuery = "data.palisade.mesh.decision"

// NewEngine returns the engine a Palisade ext_authz server decides with: the
// decision query, OPA's cache of verified JWTs (10,000 tokens), and the parts of
// the input each query reads.
func NewEngine() *rego.Engine {
	return rego.NewEngine(rego.EngineConfig{Query: DecisionQuery, JWTCacheEntries: 10000,
		InputUse: func(paths []ast.Ref) any { return partsOf(paths) }})
}

// Policies gives the policy in force; nil means none has loaded yet.
type Policies interface {
	Current() *rego.Prepared
}

// Config configures a Server.
type Config struct {
	Policies    Policies
	DecisionLog *DecisionLog // nil: decisions are not logged
	Metrics     prometheus.Registerer
	Logger      *slog.Logger
}

// Server implements envoy.service.auth.v3.Authorization. Every request gets a
// decision: one that no policy makes is a denial, with its reason in the log and
// the metric.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	cfg       Config
	decisions *prometheus.CounterVec
	outcomes  map[outcome]prometheus.Counter // decisions' children, resolved once
}

type outcome struct {
	allowed bool
	failure Failure
}

// NewServer returns a Server; register it with Register.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_authz_decisions_total",
		Help: "ext_authz decisions by result, and the reason of denials no policy made.",
	}, []string{"decision", "reason"})
	s := &Server{cfg: cfg, decisions: decisions, outcomes: map[outcome]prometheus.Counter{}}
	for _, f := range []Failure{FailureNone, FailureNoPolicy, FailureEval, FailureUndefined, FailureBadResult} {
		reason := string(f)
		if f == FailureNone {
			reason = "policy"
		}
		s.outcomes[outcome{false, f}] = decisions.WithLabelValues("deny", reason)
		if f == FailureNone {
			s.outcomes[outcome{true, f}] = decisions.WithLabelValues("allow", reason)
		}
	}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(decisions)
		if cfg.DecisionLog != nil {
			cfg.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "palisade_authz_decision_log_dropped_total",
				Help: "Decisions not logged because the decision log's buffer was full.",
			}, func() float64 { return float64(cfg.DecisionLog.Dropped()) }))
		}
	}
	return s
}

// Register adds the Authorization service to g.
func (s *Server) Register(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, s) }

// Check decides one request.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	e := s.counted(evaluate(ctx, s.cfg.Policies.Current(), req, start))
	if l := s.cfg.DecisionLog; l != nil {
		var addr string
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
		l.log(logEntry{time: start, req: req, result: e.result, decision: e.decision, native: e.native,
			revision: e.revision, peer: addr, duration: time.Since(start)})
	}
	return e.decision.response(), nil
}

// evaluation is one request's decision with what the decision log records of it.
type evaluation struct {
	decision Decision
	result   any  // the Rego policy's result; nil when no policy decided or native
	native   bool // a native decision made it: the result is the decision's
	revision string
}

// evaluate decides req by policy p (nil: none is loaded) at time now: by the
// native decision of the workload the context extensions name when p has one,
// else by its compiled Rego decision, else by the mesh library (on the parts of
// the input the query reads).
func evaluate(ctx context.Context, p *rego.Prepared, req *authv3.CheckRequest, now time.Time) evaluation {
	query := WorkloadQuery(req)
	if p != nil {
		if n, ok := p.Policy.Native.(nativeDecisions); ok && n[query] != nil {
			return decideNative(n[query], req, now, p.Policy.Revision)
		}
	}
	return decide(ctx, p, query, queryInput(p, query, req))
}

// decideNative makes a native decision. A panic there (a bug: FuzzNativeDecision
// looks for them) denies the request, as an evaluation error does, rather than
// ending the server.
func decideNative(n *nativeDecision, req *authv3.CheckRequest, now time.Time, revision string) (e evaluation) {
	defer func() {
		if r := recover(); r != nil {
			e = evaluation{decision: failed(FailureEval, fmt.Sprintf("evaluating the native decision: %v", r)), revision: revision}
		}
	}()
	return evaluation{decision: n.decide(req, now), native: true, revision: revision}
}

// Decide decides req by policy p as the ext_authz server does (without counting
// or logging it).
func Decide(ctx context.Context, p *rego.Prepared, req *authv3.CheckRequest) Decision {
	return evaluate(ctx, p, req, time.Now()).decision
}

// queryInput is the input for evaluating query of policy p (see EvalNamed): the
// parts of Input(req) the query can read, when the engine says which (NewEngine's
// does), else all of it.
func queryInput(p *rego.Prepared, query string, req *authv3.CheckRequest) ast.Value {
	if p != nil {
		if parts, ok := p.InputUse(query).(*inputParts); ok {
			return buildInput(req, parts)
		}
	}
	return Input(req)
}

// counted counts a decision in the metric, and logs a denial no policy made.
func (s *Server) counted(e evaluation) evaluation {
	d := e.decision
	s.outcomes[outcome{d.Allowed, d.Failure}].Inc()
	if d.Failure != FailureNone {
		s.cfg.Logger.Warn("request denied without a policy decision", "reason", d.Failure, "error", d.Reason)
	}
	return e
}

// decide evaluates Rego policy p (nil: none is loaded) for one input.
func decide(ctx context.Context, p *rego.Prepared, query string, input ast.Value) evaluation {
	if p == nil {
		return evaluation{decision: failed(FailureNoPolicy, "no policy is loaded")}
	}
	result, err := p.EvalNamed(ctx, query, input)
	switch {
	case errors.Is(err, rego.ErrUndefined):
		return evaluation{decision: failed(FailureUndefined, "the decision is undefined"), revision: p.Policy.Revision}
	case err != nil:
		return evaluation{decision: failed(FailureEval, fmt.Sprintf("evaluating the policy: %v", err)), revision: p.Policy.Revision}
	}
	d, err := parseDecision(result)
	if err != nil {
		return evaluation{decision: failed(FailureBadResult, err.Error()), revision: p.Policy.Revision}
	}
	return evaluation{decision: d, result: result, revision: p.Policy.Revision}
}

// Serve serves the Authorization service on lis until ctx ends, then stops
// gracefully.
//
// Checks run on a fixed set of stream workers rather than a new goroutine each:
// evaluating Rego takes a deep stack, and a new goroutine grows its stack from
// the minimum on every request (a fifth of the server's CPU under load, in
// runtime.copystack), where a worker keeps the stack it grew.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	g := grpc.NewServer(grpc.NumStreamWorkers(16))
	s.Register(g)
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			g.GracefulStop()
		case <-stopped:
		}
	}()
	err := g.Serve(lis)
	close(stopped)
	return err
}
