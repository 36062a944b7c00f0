package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/palisade-mesh/palisade/test/backend"
	"github.com/palisade-mesh/palisade/test/syncbuf"
	"github.com/palisade-mesh/palisade/xds"
)

// palisadedBin, agentBin and ctlBin are the binaries TestMain builds once for all
// tests.
var palisadedBin, agentBin, ctlBin string

// moduleRoot is the root of the Palisade module (two levels above this package).
var moduleRoot string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	moduleRoot = root
	if dir := os.Getenv(binDirEnv); dir != "" { // a test re-run in a network namespace
		palisadedBin, agentBin, ctlBin = filepath.Join(dir, "palisaded"), filepath.Join(dir, "palisade-agent"), filepath.Join(dir, "palisadectl")
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "palisade-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// Build the binaries as a user would. GOFLAGS and the rest of the environment
	// are inherited, so they are built with the same module settings as the tests.
	args := []string{"build", "-o", tmp + "/"}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/palisaded", "./cmd/palisade-agent", "./cmd/palisadectl")...)
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building the binaries in %s failed: %v\n%s", moduleRoot, err, out)
		return 1
	}
	palisadedBin, agentBin, ctlBin = filepath.Join(tmp, "palisaded"), filepath.Join(tmp, "palisade-agent"), filepath.Join(tmp, "palisadectl")
	return m.Run()
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// daemon is a running palisaded.
type daemon struct {
	Dir string // its config directory
	// SourceArgs replace --config-dir Dir when set (palisaded on Kubernetes).
	SourceArgs []string
	DataDir    string // its state: the CA, token hashes, the admin socket
	XDSAddr    string
	MonAddr    string
	CAAddr     string
	// AuthzAddr is the ext_authz endpoint, BundleAddr the policy bundle server;
	// decisions are logged to DecisionLog ("": not logged).
	AuthzAddr, BundleAddr, DecisionLog string
	cmd                                *exec.Cmd
	out                                *syncbuf.Buffer
	exited                             chan struct{}
	waitErr                            error
}

// startPalisaded runs the palisaded binary on dir with free loopback ports and waits
// until /healthz/ready answers 200. The daemon is stopped when the test ends; if the
// test failed, its output is logged.
func startPalisaded(t *testing.T, dir string) *daemon {
	t.Helper()
	return startPalisadedLogging(t, dir, true)
}

// startPalisadedLogging is startPalisaded with decisions logged or not (without
// the log, palisaded gives each query only the parts of the input it reads).
func startPalisadedLogging(t *testing.T, dir string, logged bool) *daemon {
	t.Helper()
	d := &daemon{Dir: dir, DataDir: t.TempDir()}
	if logged {
		d.DecisionLog = filepath.Join(d.DataDir, "decisions.log")
	}
	d.start(t, false)
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("--- palisaded output ---\n%s", d.out.String())
		}
	})
	return d
}

// start runs palisaded; keepPorts restarts it on the addresses it had.
func (d *daemon) start(t *testing.T, keepPorts bool) {
	t.Helper()
	// Ports are picked free and then released; another process could take one in
	// between, so a failed start is retried with fresh ports.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if !keepPorts || attempt > 0 {
			d.XDSAddr, d.MonAddr, d.CAAddr = freeAddr(t), freeAddr(t), freeAddr(t)
			d.AuthzAddr, d.BundleAddr = freeAddr(t), freeAddr(t)
		}
		d.out = &syncbuf.Buffer{}
		d.exited = make(chan struct{})
		source := d.SourceArgs
		if source == nil {
			source = []string{"--config-dir", d.Dir}
		}
		args := append(source,
			"--xds-address", d.XDSAddr,
			"--monitoring-address", d.MonAddr,
			"--data-dir", d.DataDir,
			"--ca-address", d.CAAddr,
			"--bundle-endpoint-address", "",
			"--authz-address", d.AuthzAddr,
			"--policy-bundle-address", d.BundleAddr,
			"--log-level", "debug",
		)
		if d.DecisionLog != "" {
			args = append(args, "--decision-log", d.DecisionLog)
		}
		d.cmd = exec.Command(palisadedBin, args...)
		d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
		if err := d.cmd.Start(); err != nil {
			t.Fatalf("starting palisaded: %v", err)
		}
		go func(cmd *exec.Cmd, exited chan struct{}) {
			d.waitErr = cmd.Wait()
			close(exited)
		}(d.cmd, d.exited)
		lastErr = d.waitReady(30 * time.Second)
		if lastErr == nil {
			break
		}
		d.stop()
		if !strings.Contains(d.out.String(), "address already in use") {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("palisaded did not become ready: %v\n--- palisaded output ---\n%s", lastErr, d.out.String())
	}
	out := d.out
	t.Cleanup(func() {
		if strings.Contains(out.String(), "WARNING: DATA RACE") {
			t.Errorf("palisaded (built with -race) reported a data race")
		}
	})
}

func (d *daemon) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("palisaded exited: %v", d.waitErr)
		default:
		}
		code, body, err := d.get("/healthz/ready")
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusOK:
			return nil
		default:
			last = fmt.Sprintf("status %d: %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("after %v, /healthz/ready: %s", timeout, last)
}

// stop sends SIGTERM and waits for palisaded to exit, killing it after 10s.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// Output is everything palisaded has logged so far.
func (d *daemon) Output() string { return d.out.String() }

func (d *daemon) get(path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.MonAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// ConfigDump returns /debug/config_dump for a node, or the error getting it; used in
// failure messages.
func (d *daemon) ConfigDump(node string) string {
	code, body, err := d.get("/debug/config_dump?node=" + node)
	if err != nil {
		return "config_dump: " + err.Error()
	}
	if code != http.StatusOK {
		return fmt.Sprintf("config_dump: status %d: %s", code, body)
	}
	return body
}

// Resources returns the resources /debug/config_dump lists for a node, by type URL,
// decoded into plain JSON values so that two dumps compare with reflect.DeepEqual.
func (d *daemon) Resources(t *testing.T, node string) map[string]any {
	t.Helper()
	code, body, err := d.get("/debug/config_dump?node=" + node)
	if err != nil || code != http.StatusOK {
		t.Fatalf("config_dump for %s: status %d, %v: %s", node, code, err, body)
	}
	var dump struct {
		Resources map[string]any `json:"resources"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatalf("config_dump for %s: %v", node, err)
	}
	if len(dump.Resources) == 0 {
		t.Fatalf("config_dump for %s lists no resources:\n%s", node, body)
	}
	return dump.Resources
}

// Metric returns the sum of every series of a metric on /metrics, and whether the
// metric was present at all.
func (d *daemon) Metric(t *testing.T, name string) (float64, bool) {
	t.Helper()
	code, body, err := d.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, %v", code, err)
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // another metric whose name starts with this one
		}
		fields := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	return sum, found
}

// waitMetric polls a metric until cond holds for its value.
func (d *daemon) waitMetric(t *testing.T, name, what string, cond func(float64) bool) float64 {
	t.Helper()
	var v float64
	var found bool
	err := poll(15*time.Second, func() bool {
		v, found = d.Metric(t, name)
		return found && cond(v)
	})
	if err != nil {
		t.Fatalf("metric %s: want %s, have %v (present: %v) after %v", name, what, v, found, err)
	}
	return v
}

// poll calls cond every 50ms until it returns true or timeout passes.
func poll(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeFile writes a config file atomically (temporary file, then rename), as a
// careful user or a deployment tool would, so palisaded never reads half a file.
func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// startBackend starts a plain TestService backend answering with version on a free
// loopback port.
func startBackend(t *testing.T, version string) *backend.Backend {
	t.Helper()
	return startBackendAt(t, version, "127.0.0.1:0")
}

// startBackendAt is startBackend on address.
func startBackendAt(t *testing.T, version, address string) *backend.Backend {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := backend.Start(ctx, backend.Config{Address: address, Version: version})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := b.Stop(); err != nil {
			t.Errorf("backend %s: %v", version, err)
		}
	})
	return b
}

// bootstrap returns a proxyless gRPC bootstrap for a node in namespace default.
func bootstrap(t *testing.T, d *daemon, nodeID string, labels map[string]string) []byte {
	t.Helper()
	b, err := xds.GRPCBootstrap(xds.BootstrapOptions{
		NodeID:         nodeID,
		XDSAddress:     d.XDSAddr,
		Namespace:      "default",
		ServiceAccount: "default",
		Labels:         labels,
		InstanceIPs:    []string{"127.0.0.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// client is a grpc-go proxyless client with its own xDS node identity.
type client struct {
	t      *testing.T
	d      *daemon
	NodeID string
	Target string
	conn   *grpc.ClientConn
}

// reviewsTarget is what clients dial to reach the reviews service.
const reviewsTarget = "xds:///reviews.default.svc.cluster.local:9080"

// clientSeq numbers clients so that every one has its own node ID.
var clientSeq atomic.Int64

// newClient dials target through palisaded with a fresh node identity and waits until
// a first call succeeds.
func newClient(t *testing.T, d *daemon, target string) *client {
	t.Helper()
	nodeID := fmt.Sprintf("e2e-%s~client-%d", strings.ReplaceAll(t.Name(), "/", "-"), clientSeq.Add(1))
	conn, err := backend.Dial(target, bootstrap(t, d, nodeID, map[string]string{"app": "e2e-client"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &client{t: t, d: d, NodeID: nodeID, Target: target, conn: conn}
	var lastErr error
	if err := poll(20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, lastErr = backend.Call(ctx, conn, nil)
		return lastErr == nil
	}); err != nil {
		t.Fatalf("client %s never reached %s: %v (last error: %v)\nconfig_dump:\n%s", nodeID, target, err, lastErr, d.ConfigDump(nodeID))
	}
	return c
}

// calls makes n calls with the given headers and tallies who answered.
func (c *client) calls(n int, headers map[string]string) *backend.Tally {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return backend.CallN(ctx, c.conn, n, headers)
}

// waitAll polls batches of calls until one whole batch is answered by version, and
// returns how long that took.
func (c *client) waitAll(version string, headers map[string]string, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var last *backend.Tally
	if err := poll(timeout, func() bool {
		last = c.calls(50, headers)
		return last.Errors == 0 && last.Versions[version] == 50
	}); err != nil {
		c.t.Fatalf("traffic never moved entirely to %s: %v; last batch of 50: %s\nconfig_dump:\n%s",
			version, err, last, c.d.ConfigDump(c.NodeID))
	}
	return time.Since(start)
}
