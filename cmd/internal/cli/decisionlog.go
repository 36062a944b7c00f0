package cli

import (
	"os"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/cmd/internal/buildinfo"
)

// DecisionLogConfig labels a daemon's decision log entries as OPA labels its own:
// the instance ("DAEMON@HOST") and the version.
func DecisionLogConfig(daemon string) authz.DecisionLogConfig {
	host, _ := os.Hostname()
	return authz.DecisionLogConfig{
		Path:   "palisade/mesh/decision",
		Bundle: "palisade",
		Labels: map[string]string{"id": daemon + "@" + host, "version": buildinfo.String()},
	}
}
