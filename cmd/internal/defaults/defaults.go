// Package defaults holds the default paths that palisaded and its clients must
// agree on.
package defaults

import (
	"os"
	"path/filepath"
)

// DataDir is where palisaded keeps its state (the CA, bootstrap token hashes, the
// admin socket): /var/lib/palisade for root, as for a system daemon, else under
// the user's XDG state directory.
func DataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/palisade"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "palisade")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "palisade")
	}
	return filepath.Join(os.TempDir(), "palisade")
}

// AdminSocket is palisaded's admin API socket inside a data directory.
func AdminSocket(dataDir string) string { return filepath.Join(dataDir, "admin.sock") }

// RootCert is the file in a data directory where palisaded writes the roots that
// palisade-agent trusts palisaded with (--ca-bundle).
func RootCert(dataDir string) string { return filepath.Join(dataDir, "root-cert.pem") }
