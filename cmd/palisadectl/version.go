package main

import (
	"fmt"
	"io"

	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
)

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "version", "Prints palisadectl's version.", stderr)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "palisadectl", buildinfo.String())
	return nil
}
