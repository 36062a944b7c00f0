package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/palisade-mesh/palisade/policies"
)

func runPolicy(args []string, stdout, stderr io.Writer) error {
	if len(args) >= 1 && args[0] == "test" {
		return runPolicyTest(args[1:], stdout, stderr)
	}
	fmt.Fprintln(stderr, "Usage: palisadectl policy test DIR... [flags]")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		return nil
	}
	return fmt.Errorf("%w: unknown policy command %q", errUsage, strings.Join(args, " "))
}

func runPolicyTest(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy test", "policy test DIR... [flags]",
		"Runs the Rego tests (rules named test_*) of a policy bundle, as `opa test` does,\nwith Palisade's mesh library loaded beside it: tests can evaluate\ndata.palisade.mesh.decision with their own input and data.palisade.config.\nDIR holds .rego files and, optionally, data files (data.json, data.yaml).", stderr)
	verbose := fs.Bool("v", false, "print every test, not only failures")
	run := fs.String("run", "", "run only the tests whose names match this regular expression")
	timeout := fs.Duration("timeout", 30*time.Second, "time limit for each test")
	dirs, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		return fmt.Errorf("%w: name the directories of the bundle to test", errUsage)
	}
	modules, store, err := tester.LoadWithRegoVersion(dirs, nil, ast.RegoV1)
	if err != nil {
		return err
	}
	lib := policies.Library()
	for _, name := range slices.Sorted(maps.Keys(lib)) {
		path := "palisade:" + name // cannot collide with a user's file path
		m, err := ast.ParseModuleWithOpts(path, lib[name], ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return fmt.Errorf("the mesh library: %w", err)
		}
		modules[path] = m
	}
	ctx := context.Background()
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return err
	}
	defer store.Abort(ctx, txn)
	runner := tester.NewRunner().SetStore(store).SetModules(modules).SetTimeout(*timeout).
		SetDefaultRegoVersion(ast.RegoV1).CapturePrintOutput(true).Filter(*run)
	results, err := runner.RunTests(ctx, txn)
	if err != nil {
		return err
	}
	var failed, total int
	collected := make(chan *tester.Result)
	go func() {
		defer close(collected)
		for r := range results {
			total++
			if r.Fail || r.Error != nil {
				failed++
			}
			collected <- r
		}
	}()
	reporter := tester.PrettyReporter{Output: stdout, Verbose: *verbose}
	if err := reporter.Report(collected); err != nil {
		return err
	}
	if total == 0 {
		return fmt.Errorf("%w: no tests found in %s", errFindings, strings.Join(dirs, ", "))
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d tests failed", errFindings, failed, total)
	}
	return nil
}
