package config

import (
	"context"
	"log/slog"
)

// DiagnosticLog logs the diagnostics of successive loads of a config source, each
// once when it first appears: an unchanged problem is not logged on every reload.
// It is not safe for concurrent use; a source calls it from its one loop.
type DiagnosticLog struct {
	log    *slog.Logger
	logged map[Diagnostic]bool
}

// NewDiagnosticLog returns a DiagnosticLog writing to log.
func NewDiagnosticLog(log *slog.Logger) *DiagnosticLog {
	return &DiagnosticLog{log: log, logged: map[Diagnostic]bool{}}
}

// LogNew logs the diagnostics of the latest load that the load before did not have.
func (l *DiagnosticLog) LogNew(diags []Diagnostic) {
	current := make(map[Diagnostic]bool, len(diags))
	for _, d := range diags {
		current[d] = true
		if l.logged[d] {
			continue
		}
		level := slog.LevelWarn
		if d.Severity == SeverityError {
			level = slog.LevelError
		}
		l.log.LogAttrs(context.Background(), level, "config problem",
			slog.String("file", d.Source.File),
			slog.Int("doc", d.Source.Index),
			slog.String("kind", string(d.Object.Kind)),
			slog.String("namespace", d.Object.Namespace),
			slog.String("name", d.Object.Name),
			slog.String("message", d.Message),
		)
	}
	l.logged = current
}
