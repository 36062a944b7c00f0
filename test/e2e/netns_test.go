package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// binDirEnv passes the binaries TestMain built to a test re-run in a network
// namespace, and marks that run.
const binDirEnv = "PALISADE_E2E_BIN_DIR"

// podAddresses are the workload addresses of the tests that run in their own
// network namespace: Kubernetes refuses loopback addresses in EndpointSlices, so
// the pods' addresses there are these, on the namespace's loopback interface.
var podAddresses = []string{"10.77.0.1", "10.77.0.2"}

// inNetworkNamespace re-runs the calling test alone in a network namespace of its
// own (unshare -n, which needs root), where podAddresses are local addresses, and
// reports whether the caller is that run: the caller goes on when it returns true and
// returns at once when it returns false (the outer run, which has already reported
// the inner one's result).
func inNetworkNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv(binDirEnv) != "" {
		return true
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root, to create a network namespace (unshare -n) where pod addresses are local")
	}
	setup := "ip link set lo up"
	for _, a := range podAddresses {
		setup += " && ip addr add " + a + "/32 dev lo"
	}
	args := []string{"-n", "--", "sh", "-c", setup + ` && exec "$0" "$@"`, os.Args[0],
		"-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), binDirEnv+"="+filepath.Dir(palisadedBin))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s in a network namespace: %v\n%s", t.Name(), err, out)
	}
	t.Logf("ran in a network namespace:\n%s", lastLines(string(out), 15))
	return false
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
