// Command palisadectl is Palisade's command line: it validates configuration
// offline, shows what a proxy gets from a running palisaded, and writes bootstraps.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"analyze", "validate a configuration directory offline", runAnalyze},
		{"proxy-config", "print the configuration a connected proxy gets from palisaded", runProxyConfig},
		{"bootstrap", "write the bootstrap of a proxyless gRPC app (JSON) or an Envoy sidecar (YAML)", runBootstrap},
		{"authz", "explain the decision the mesh's policies make for a request (authz explain)", runAuthz},
		{"policy", "run a Rego policy bundle's tests with the mesh library loaded (policy test)", runPolicy},
		{"identity", "create bootstrap tokens for workload identities (identity token create)", runIdentity},
		{"install", "print or apply the manifests that install Palisade on Kubernetes", runInstall},
		{"version", "print the version", runVersion},
	}
}

// errUsage marks an error in how the command was called (exit status 2).
var errUsage = errors.New("usage error")

// errFindings marks a successful run that found problems (exit status 1).
var errFindings = errors.New("problems found")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errFindings):
			return 1
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "palisadectl %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(stderr, "palisadectl %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "palisadectl: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: palisadectl COMMAND [flags]\n\nCommands:")
	cs := commands()
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'palisadectl COMMAND -h' for a command's flags.")
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, usageLine, help string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: palisadectl %s\n\n%s\n\nFlags:\n", usageLine, help)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, allowing them before and after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}
