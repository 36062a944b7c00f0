// Package cli holds what Palisade's daemons share in how they start.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
)

// Common are the flags every daemon has: logging and --version.
type Common struct {
	logLevel, logFormat string
	version             bool
}

// Register adds the common flags to fs.
func (c *Common) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
}

// Parse parses the command line of the daemon name. It exits after -h or
// --version (status 0) and on a bad flag (status 2); otherwise it returns the
// daemon's logger.
func (c *Common) Parse(fs *flag.FlagSet, name string, args []string) *slog.Logger {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if c.version {
		fmt.Println(name, buildinfo.String())
		os.Exit(0)
	}
	log, err := NewLogger(c.logLevel, c.logFormat)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	return log
}

// NewLogger makes the logger of --log-level and --log-format.
func NewLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}
