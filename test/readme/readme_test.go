// Package readme runs the README's first command as a new user would and checks that
// palisaded comes up and serves the example mesh.
package readme

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// firstCommand returns the command in the README's "```sh" block marked as step 1.
func firstCommand(t *testing.T) string {
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`^(\S.*)\s+# 1: `)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			return strings.TrimSpace(m[1])
		}
	}
	t.Fatal("the README has no command marked '# 1: '")
	return ""
}

func TestReadmeFirstCommandServesExampleMesh(t *testing.T) {
	command := firstCommand(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", command)
	cmd.Dir = "../.."
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // make → go run → palisaded: stop them all
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := make(chan string, 1)
	go func() { b, _ := io.ReadAll(out); logs <- string(b) }()
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("output of %q:\n%s", command, <-logs)
		}
	}()

	// The README says the daemon listens on the default ports.
	deadline := time.Now().Add(4 * time.Minute) // the first run compiles palisaded
	for {
		resp, err := http.Get("http://127.0.0.1:15014/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q: palisaded not ready on 127.0.0.1:15014: %v", command, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The CA API answers TLS on 15012 as palisaded's own SPIFFE identity.
	conn, err := tls.Dial("tcp", "127.0.0.1:15012", &tls.Config{InsecureSkipVerify: true}) // only the identity is checked here
	if err != nil {
		t.Fatalf("CA API on 127.0.0.1:15012: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/palisaded" {
		t.Errorf("CA API certificate names %v, want spiffe://cluster.local/palisaded", leaf.URIs)
	}

	resp, err := http.Get("http://127.0.0.1:15014/debug/config_dump?namespace=default&kind=proxyless")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dump struct {
		Resources map[string][]json.RawMessage `json:"resources"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	listeners := dump.Resources["type.googleapis.com/envoy.config.listener.v3.Listener"]
	var names []string
	for _, l := range listeners {
		var v struct{ Name string }
		_ = json.Unmarshal(l, &v)
		names = append(names, v.Name)
	}
	for _, want := range []string{"reviews.default.svc.cluster.local:9080", "ratings.default.svc.cluster.local:9080", "productpage.default.svc.cluster.local:9080"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("example mesh listener %s not served; got %v", want, names)
		}
	}
}
