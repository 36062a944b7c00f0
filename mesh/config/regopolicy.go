package config

import (
	"errors"
	"regexp"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-mesh/palisade/mesh/config/policypb"
)

// DefaultDecision is the rule of a RegoPolicy's module that holds its decision when
// spec.decision is left out.
const DefaultDecision = "allow"

// ruleName matches a plain Rego rule name, as spec.decision names one.
var ruleName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// regoPolicy checks a RegoPolicy: its module must parse and compile on its own as
// Rego v1, and define the decision rule. The module is not kept: the policy engine
// compiles it again, in its own package, with the mesh's modules.
func (v *validator) regoPolicy(s *policypb.RegoPolicy) {
	v.workloadSelector("spec.selector", s.Selector)
	decision := s.Decision
	if decision == "" {
		decision = DefaultDecision
	} else if !ruleName.MatchString(decision) {
		v.errorf("spec.decision", "%q is not a rule name (letters, digits and _, not starting with a digit)", decision)
		decision = ""
	}
	if strings.TrimSpace(s.Rego) == "" {
		v.errorf("spec.rego", "a Rego module is required")
		return
	}
	mod, err := ast.ParseModuleWithOpts("spec.rego", s.Rego, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		v.regoErrors(err)
		return
	}
	if mod == nil { // not expected: the parser reports an empty module
		v.errorf("spec.rego", "the module is empty")
		return
	}
	c := ast.NewCompiler()
	if c.Compile(map[string]*ast.Module{"spec.rego": mod}); c.Failed() {
		v.regoErrors(c.Errors)
		return
	}
	if decision == "" {
		return
	}
	defined := false
	for _, r := range mod.Rules {
		ref := r.Head.Ref()
		if len(ref) == 0 || !ref[0].Equal(ast.VarTerm(decision)) {
			continue
		}
		defined = true
		switch {
		case len(r.Head.Args) > 0:
			v.errorf("spec.decision", "%s is a function in the module; the decision must be a rule without arguments", decision)
			return
		case len(ref) == 1 && r.Head.RuleKind() == ast.MultiValue:
			v.errorf("spec.decision", "%s is a set (contains) in the module; the decision must be a boolean or an object", decision)
			return
		}
	}
	if !defined {
		v.errorf("spec.decision", "the module defines no rule %s", decision)
	}
}

// regoErrors reports the errors of the Rego parser or compiler with their position
// in the module: "spec.rego: line 3, column 2: rego_parse_error: unexpected ...".
func (v *validator) regoErrors(err error) {
	var errs ast.Errors
	var one *ast.Error
	switch {
	case errors.As(err, &errs):
	case errors.As(err, &one): // the parser's "empty module"
		errs = ast.Errors{one}
	}
	if len(errs) == 0 {
		v.errorf("spec.rego", "%v", err)
		return
	}
	for _, e := range errs {
		if e.Location == nil || e.Location.Row == 0 {
			v.errorf("spec.rego", "%s: %s", e.Code, e.Message)
			continue
		}
		v.errorf("spec.rego", "line %d, column %d: %s: %s", e.Location.Row, e.Location.Col, e.Code, e.Message)
	}
}
