package main

import (
	"fmt"
	"io"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/filesource"
)

func runAnalyze(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("analyze", "analyze [flags] DIR",
		"Reads every *.yaml/*.yml under DIR as palisaded would, reports each problem\n(file, document, object, field) and exits 1 if any is an error.", stderr)
	strict := fs.Bool("strict", false, "exit 1 on warnings too")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: expected one directory, got %d arguments", errUsage, len(pos))
	}
	objs, diags, err := filesource.Load(pos[0])
	if err != nil {
		return err
	}
	snap := mesh.Build(0, objs)
	diags = append(diags, snap.Diagnostics...)
	var errs, warnings int
	for _, d := range diags {
		fmt.Fprintln(stdout, d)
		if d.Severity == config.SeverityError {
			errs++
		} else {
			warnings++
		}
	}
	fmt.Fprintf(stdout, "%d objects, %d services: %d errors, %d warnings\n", len(objs), len(snap.Services), errs, warnings)
	if errs > 0 || (*strict && warnings > 0) {
		return errFindings
	}
	return nil
}
