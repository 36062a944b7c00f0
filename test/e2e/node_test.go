package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/palisade-mesh/palisade/test/syncbuf"
)

// The main routing scenarios (split, header match, live change) through a second,
// independent proxyless implementation: @grpc/grpc-js-xds on Node.js, driven by
// test/node/client.js. Node.js and npm are required: the test fails, never skips,
// without them.
func TestNodeGRPCJSXDS(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not on PATH: the Node.js end-to-end tests need Node.js >= 18 and npm (they install @grpc/grpc-js-xds with test/node/install.sh): %v", tool, err)
		}
	}
	nodeDir := filepath.Join(moduleRoot, "test", "node")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, "sh", filepath.Join(nodeDir, "install.sh"))
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("test/node/install.sh (npm ci of @grpc/grpc-js-xds) failed: %v\n%s", err, out)
	}

	m := startMesh(t, 80, 20)
	nodeID := "e2e-node~client"
	bootstrapFile := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(bootstrapFile, bootstrap(t, m.daemon, nodeID, map[string]string{"app": "e2e-node-client"}), 0o644); err != nil {
		t.Fatal(err)
	}
	nc := &nodeClient{t: t, dir: nodeDir, bootstrap: bootstrapFile, d: m.daemon, nodeID: nodeID}

	t.Run("split", func(t *testing.T) {
		nc.t = t
		tally := nc.run(reviewsTarget, splitCalls, "")
		t.Logf("grpc-js-xds, 80/20 split over %d calls: %v", splitCalls, tally)
		checkSplit(t, tally["v1"], tally["v2"], tally["errors"])
		if t.Failed() {
			t.Logf("config_dump:\n%s", m.ConfigDump(nodeID))
		}
	})
	t.Run("header match", func(t *testing.T) {
		nc.t = t
		tally := nc.run(reviewsTarget, 100, "end-user=jason")
		if tally["errors"] != 0 || tally["v2"] != 100 {
			t.Fatalf("grpc-js-xds, end-user: jason: want 100 calls answered by v2, have %v\nconfig_dump:\n%s", tally, m.ConfigDump(nodeID))
		}
	})
	t.Run("live change", func(t *testing.T) {
		nc.t = t
		m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(0, 100))
		// Each run is a fresh process (and xDS connection); poll until the change
		// is what palisaded serves, then check a larger batch.
		start := time.Now()
		var last map[string]int
		if err := poll(20*time.Second, func() bool {
			last = nc.run(reviewsTarget, 50, "")
			return last["errors"] == 0 && last["v2"] == 50
		}); err != nil {
			t.Fatalf("grpc-js-xds: traffic never moved entirely to v2 after writing 0/100: %v; last batch: %v\nconfig_dump:\n%s", err, last, m.ConfigDump(nodeID))
		}
		t.Logf("grpc-js-xds: 0/100 seen within %v", time.Since(start).Round(time.Millisecond))
		if tally := nc.run(reviewsTarget, 300, ""); tally["errors"] != 0 || tally["v2"] != 300 {
			t.Fatalf("grpc-js-xds after 0/100: want 300 calls answered by v2, have %v", tally)
		}
	})
	t.Run("live change in one process", func(t *testing.T) {
		nc.t = t
		// One long-lived grpc-js-xds client must follow a change pushed while it is
		// connected, not only pick up the config a new connection gets.
		m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(0, 100))
		w := nc.start(reviewsTarget)
		w.waitAll("v2", 20*time.Second)
		m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(100, 0))
		took := w.waitAll("v1", 20*time.Second)
		t.Logf("grpc-js-xds (one process): 100/0 took effect within %v", took.Round(time.Millisecond))
	})
}

type nodeClient struct {
	t         *testing.T
	dir       string
	bootstrap string
	d         *daemon
	nodeID    string
}

// run runs client.js once and returns its tally.
func (n *nodeClient) run(target string, count int, header string) map[string]int {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"client.js", target, strconv.Itoa(count)}
	if header != "" {
		args = append(args, header)
	}
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = n.dir
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+n.bootstrap)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		n.t.Fatalf("node %v: %v\nstdout: %s\nstderr: %s", args, err, stdout.String(), stderr.String())
	}
	return parseNodeTally(n.t, stdout.Bytes(), stderr.String())
}

func parseNodeTally(t *testing.T, out []byte, stderr string) map[string]int {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(lastLine(out)), &raw); err != nil {
		t.Fatalf("client.js output %q is not a JSON tally: %v\nstderr: %s", out, err, stderr)
	}
	tally := map[string]int{}
	for k, v := range raw {
		switch v := v.(type) {
		case float64:
			tally[k] = int(v)
		case string:
			if k == "lastError" {
				t.Logf("client.js last error: %s", v)
			}
		}
	}
	return tally
}

func lastLine(b []byte) []byte {
	b = bytes.TrimRight(b, "\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

// nodeWatch is a long-running client.js process that prints one tally per batch.
type nodeWatch struct {
	t      *testing.T
	n      *nodeClient
	nodeID string
	lines  chan []byte
	stderr *syncbuf.Buffer
}

// nodeBatch is the number of calls in each batch of a long-running client.js.
const nodeBatch = 50

// start runs client.js in repeat mode (REPEAT=1: batches of nodeBatch calls, a tally
// line after each, until killed) with its own node identity, until the test ends.
func (n *nodeClient) start(target string) *nodeWatch {
	n.t.Helper()
	nodeID := n.nodeID + "-watch"
	bootstrapFile := filepath.Join(n.t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(bootstrapFile, bootstrap(n.t, n.d, nodeID, map[string]string{"app": "e2e-node-client"}), 0o644); err != nil {
		n.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "node", "client.js", target, strconv.Itoa(nodeBatch))
	cmd.Dir = n.dir
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bootstrapFile, "REPEAT=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	w := &nodeWatch{t: n.t, n: n, nodeID: nodeID, lines: make(chan []byte, 1000), stderr: &syncbuf.Buffer{}}
	cmd.Stderr = w.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		n.t.Fatal(err)
	}
	go func() {
		defer close(w.lines)
		buf := make([]byte, 0, 4096)
		chunk := make([]byte, 4096)
		for {
			k, err := stdout.Read(chunk)
			buf = append(buf, chunk[:k]...)
			for {
				i := bytes.IndexByte(buf, '\n')
				if i < 0 {
					break
				}
				w.lines <- bytes.Clone(buf[:i])
				buf = buf[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	n.t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	return w
}

// waitAll reads batch tallies until one is answered entirely by version.
func (w *nodeWatch) waitAll(version string, timeout time.Duration) time.Duration {
	w.t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	var last map[string]int
	for {
		select {
		case line, ok := <-w.lines:
			if !ok {
				w.t.Fatalf("client.js exited; stderr: %s", w.stderr.String())
			}
			last = parseNodeTally(w.t, line, w.stderr.String())
			if last["errors"] == 0 && last[version] == nodeBatch {
				return time.Since(start)
			}
		case <-deadline:
			w.t.Fatalf("grpc-js-xds (one process): traffic never moved entirely to %s within %v; last batch: %v\nconfig_dump:\n%s",
				version, timeout, last, w.n.d.ConfigDump(w.nodeID))
		}
	}
}
