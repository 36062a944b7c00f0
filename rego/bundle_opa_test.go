package rego

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-mesh/palisade/test/syncbuf"
)

// stockOPABinary is the stock OPA CLI that scripts/opa.sh builds (pinned to the
// release in go.mod) into the repository's .cache/bin.
func stockOPABinary(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
	bin := filepath.Join(dir, ".cache", "bin", "opa")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("stock OPA CLI missing at %s: run ./scripts/opa.sh from the repository root first (scripts/test.sh does): %v", bin, err)
	}
	return bin
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// stockOPA is a running `opa run --server`.
type stockOPA struct {
	t    *testing.T
	url  string
	logs *syncbuf.Buffer
	exit chan error
}

func startOPA(t *testing.T, config map[string]any) *stockOPA {
	t.Helper()
	bin := stockOPABinary(t)
	raw, err := json.MarshalIndent(config, "", "  ") // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "opa.yaml")
	if err := os.WriteFile(cfgFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeLoopbackAddr(t)
	o := &stockOPA{t: t, url: "http://" + addr, logs: &syncbuf.Buffer{}, exit: make(chan error, 1)}
	cmd := exec.Command(bin, "run", "--server", "--skip-version-check",
		"--addr", addr, "--config-file", cfgFile, "--log-level", "debug", "--log-format", "text")
	cmd.Stdout, cmd.Stderr = o.logs, o.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() { o.exit <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-o.exit:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-o.exit
		}
		if t.Failed() {
			t.Logf("OPA config:\n%s\nOPA logs:\n%s", raw, o.logs.String())
		}
	})
	return o
}

// await polls cond until it holds, failing (with OPA's logs) at the deadline
// or if OPA exits.
func (o *stockOPA) await(what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	o.t.Helper()
	start := time.Now()
	var last string
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		last = state
		select {
		case err := <-o.exit:
			o.exit <- err
			o.t.Fatalf("OPA exited (%v) while waiting for %s", err, what)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(start) > timeout {
			o.t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
	}
}

func (o *stockOPA) healthy() (bool, string) {
	resp, err := http.Get(o.url + "/health?bundles")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == http.StatusOK, fmt.Sprintf("%d %s", resp.StatusCode, body)
}

// query asks OPA's data API; the result is the JSON text of "result", or ""
// when undefined.
func (o *stockOPA) query(path string, input any) (string, error) {
	body, err := json.Marshal(map[string]any{"input": input})
	if err != nil {
		return "", err
	}
	resp, err := http.Post(o.url+"/v1/data/"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST /v1/data/%s: %s: %s", path, resp.Status, raw)
	}
	var out struct{ Result json.RawMessage }
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", err
	}
	return string(out.Result), nil
}

// answers is the policy's decision for each user, e.g. "alice=true bob=false".
func (o *stockOPA) answers(users ...string) (string, error) {
	var parts []string
	for _, u := range users {
		r, err := o.query("palisade/test/allow", map[string]any{"user": u})
		if err != nil {
			return "", err
		}
		parts = append(parts, u+"="+r)
	}
	return strings.Join(parts, " "), nil
}

func (o *stockOPA) revision() string {
	r, err := o.query("system/bundles/palisade/manifest/revision", nil)
	if err != nil {
		return err.Error()
	}
	var rev string
	_ = json.Unmarshal([]byte(r), &rev)
	return rev
}

// TestStockOPALoadsServedBundles runs the real OPA CLI against a BundleServer:
// it downloads, verifies and activates palisaded's signed bundles, refuses one
// signed with another key, and follows changes, by polling and by long polling.
func TestStockOPALoadsServedBundles(t *testing.T) {
	for _, tc := range []struct {
		name     string
		longPoll bool
	}{
		{"polling", false},
		{"long polling", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer := newTestSigner(t, "palisade", false)
			server := NewBundleServer()
			counter := newBundleCounter(server)
			hs := httptest.NewServer(counter)
			t.Cleanup(hs.Close)
			t.Cleanup(server.Close) // runs before hs.Close: ends held requests

			v1, rev1 := mustBuild(t, testBundleContents("alice"), signer)
			mustSet(t, server, "palisade", v1, rev1)

			polling := map[string]any{"min_delay_seconds": 1, "max_delay_seconds": 1}
			signing := map[string]any{"keyid": "palisade"}
			if tc.longPoll {
				polling["long_polling_timeout_seconds"] = 10
				signing = map[string]any{} // the key named by the signature's kid
			}
			start := time.Now()
			opa := startOPA(t, map[string]any{
				"services": map[string]any{"palisade": map[string]any{"url": hs.URL}},
				"bundles": map[string]any{"palisade": map[string]any{
					"service":  "palisade",
					"resource": "bundles/palisade",
					"polling":  polling,
					"signing":  signing,
				}},
				"keys": map[string]any{"palisade": map[string]any{
					"algorithm": BundleSigningAlgorithm,
					"key":       string(signer.PublicKeyPEM()),
				}},
			})
			opa.await("OPA to activate the bundle (/health?bundles)", 30*time.Second, opa.healthy)
			t.Logf("OPA started and activated the first bundle in %v", time.Since(start).Round(time.Millisecond))

			check := func(want string) func() (bool, string) {
				return func() (bool, string) {
					got, err := opa.answers("alice", "bob", "carol")
					if err != nil {
						return false, err.Error()
					}
					return got == want, got
				}
			}
			if ok, got := check("alice=true bob=false carol=false")(); !ok {
				t.Fatalf("first bundle: %s", got)
			}
			if got := opa.revision(); got != rev1 {
				t.Errorf("OPA's bundle revision %q, want %q", got, rev1)
			}

			// Signed with another key: OPA downloads it, refuses it and keeps
			// the bundle it has.
			intruder := newTestSigner(t, "palisade", false)
			bad, badRev := mustBuild(t, testBundleContents("alice", "bob", "carol"), intruder)
			mustSet(t, server, "palisade", bad, badRev)
			opa.await("OPA to download the bad bundle twice", 20*time.Second, func() (bool, string) {
				n := counter.servedCount(badRev)
				return n >= 2, fmt.Sprintf("downloaded %d times", n)
			})
			if ok, got := check("alice=true bob=false carol=false")(); !ok {
				t.Fatalf("after a bundle signed with another key: %s", got)
			}
			if got := opa.revision(); got != rev1 {
				t.Errorf("after the bad bundle, OPA's revision %q, want %q", got, rev1)
			}
			if !strings.Contains(opa.logs.String(), "verif") {
				t.Errorf("OPA's logs do not mention the failed verification")
			}

			// A new signed bundle (new data and a new rule) is picked up.
			v2c := testBundleContents("bob", "carol")
			v2c.Modules["palisade/test.rego"] = testBundlePolicy + "\nallow if input.user == \"admin\"\n"
			v2, rev2 := mustBuild(t, v2c, signer)
			mustSet(t, server, "palisade", v2, rev2)
			took := opa.await("OPA to pick up the new bundle", 20*time.Second, func() (bool, string) {
				got, err := opa.answers("alice", "bob", "carol", "admin")
				if err != nil {
					return false, err.Error()
				}
				return got == "alice=false bob=true carol=true admin=true", got
			})
			t.Logf("OPA picked up the change in %v", took.Round(time.Millisecond))
			if got := opa.revision(); got != rev2 {
				t.Errorf("OPA's bundle revision %q, want %q", got, rev2)
			}
			if tc.longPoll {
				if !counter.sawPrefer("wait=10") {
					t.Error("OPA never asked to long poll")
				}
				if took > 3*time.Second {
					t.Errorf("with long polling OPA took %v to see the change", took)
				}
			}
		})
	}
}
