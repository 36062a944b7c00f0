package main

// SPIRE as the baseline (--spire): spire-server and spire-agent v1.13.3, built by
// scripts/spire.sh, measured by this program with the same clients on the same
// machine right after Palisade. SPIRE runs with its defaults (entry cache reloaded
// every 5 s, agent sync every 5 s), as the figures quoted for it were taken.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/palisade-mesh/palisade/bench/internal/proc"
)

const spireBin = ".cache/spire/bin"

// spireNode is the node alias every bench agent gets through its join token, so
// that one workload entry (parent: the alias) applies to all of them.
var spireNode = spiffeid.RequireFromPath(td, "/bench/node")

type spireProc struct {
	dir, serverSocket, agentConf string
	server                       *exec.Cmd
	agent                        *agentProc // the agent serving socket
	socket                       string
	serverIdle, agentIdle        int64 // RSS after setup
}

func (s *spireProc) stop() {
	if s.agent != nil {
		s.agent.stop()
	}
	_ = s.server.Process.Kill()
	_ = s.server.Wait()
}

// startSPIRE starts spire-server (sqlite3 datastore, in-memory keys, no upstream
// authority, join_token attestation) and one spire-agent (unix workload
// attestor) in dir, registers spiffe://cluster.local/ns/bench/sa/fetch for this
// process's uid, and returns once the agent serves that SVID.
func startSPIRE(dir string) (*spireProc, error) {
	bind, port, _ := net.SplitHostPort(proc.FreeAddr())
	s := &spireProc{dir: dir, serverSocket: filepath.Join(dir, "server.sock"), agentConf: filepath.Join(dir, "agent.conf")}
	serverConf := fmt.Sprintf(`server {
	bind_address = %q
	bind_port = %q
	socket_path = %q
	trust_domain = %q
	data_dir = %q
	log_level = "WARN"
}
plugins {
	DataStore "sql" {
		plugin_data {
			database_type = "sqlite3"
			connection_string = %q
		}
	}
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "memory" {
		plugin_data {}
	}
}
`, bind, port, s.serverSocket, td.Name(), filepath.Join(dir, "server"), filepath.Join(dir, "server", "datastore.sqlite3"))
	agentConf := fmt.Sprintf(`agent {
	server_address = %q
	server_port = %q
	trust_bundle_path = %q
	trust_domain = %q
	log_level = "WARN"
}
plugins {
	NodeAttestor "join_token" {
		plugin_data {}
	}
	KeyManager "memory" {
		plugin_data {}
	}
	WorkloadAttestor "unix" {
		plugin_data {}
	}
}
`, bind, port, filepath.Join(dir, "bundle.pem"), td.Name())
	if err := os.WriteFile(filepath.Join(dir, "server.conf"), []byte(serverConf), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.agentConf, []byte(agentConf), 0o644); err != nil {
		return nil, err
	}

	s.server = exec.Command(filepath.Join(spireBin, "spire-server"), "run", "-config", filepath.Join(dir, "server.conf"))
	if err := startLogged(s.server, filepath.Join(dir, "server.log")); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.stop()
		}
	}()
	if err := poll(30*time.Second, 10*time.Millisecond, func() error { _, err := s.cli("healthcheck"); return err }); err != nil {
		return nil, fmt.Errorf("spire-server not healthy: %w%s", err, logTail(filepath.Join(dir, "server.log")))
	}
	bundle, err := s.cli("bundle", "show")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "bundle.pem"), []byte(bundle), 0o644); err != nil {
		return nil, err
	}
	if err := s.register("/ns/bench/sa/fetch"); err != nil {
		return nil, err
	}
	token, err := s.token()
	if err != nil {
		return nil, err
	}
	// The entries are new: the server serves them once its entry cache reloads,
	// and the agent gets them at its next sync.
	if s.agent, err = s.startAgent(token, 60*time.Second); err != nil {
		return nil, err
	}
	s.socket = s.agent.socket
	ok = true
	return s, nil
}

// cli runs a spire-server command against the server's API socket.
func (s *spireProc) cli(args ...string) (string, error) {
	args = append(args, "-socketPath", s.serverSocket) // after the (sub)command; the rest are flags too
	out, err := exec.Command(filepath.Join(spireBin, "spire-server"), args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("spire-server %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// token generates a join token whose agent gets the node alias spireNode.
func (s *spireProc) token() (string, error) {
	out, err := s.cli("token", "generate", "-spiffeID", spireNode.String(), "-ttl", "3600")
	if err != nil {
		return "", err
	}
	token, ok := strings.CutPrefix(strings.TrimSpace(out), "Token: ")
	if !ok {
		return "", fmt.Errorf("spire-server token generate said %q", out)
	}
	return token, nil
}

// register creates a workload entry for path under spireNode, selecting this
// process's uid.
func (s *spireProc) register(path string) error {
	_, err := s.cli("entry", "create", "-parentID", spireNode.String(), "-spiffeID", spiffeid.RequireFromPath(td, path).String(),
		"-selector", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	return err
}

// startAgent starts a spire-agent with its own data directory and socket and
// returns once an X.509-SVID can be fetched from it.
func (s *spireProc) startAgent(token string, timeout time.Duration) (*agentProc, error) {
	dir, err := os.MkdirTemp(s.dir, "agent-")
	if err != nil {
		return nil, err
	}
	a := &agentProc{socket: filepath.Join(dir, "agent.sock")}
	a.cmd = exec.Command(filepath.Join(spireBin, "spire-agent"), "run", "-config", s.agentConf, "-dataDir", dir, "-socketPath", a.socket, "-joinToken", token)
	a.started = time.Now()
	if err := startLogged(a.cmd, filepath.Join(dir, "agent.log")); err != nil {
		return nil, err
	}
	if err := a.waitFirstSVID(timeout); err != nil {
		a.stop()
		return nil, fmt.Errorf("spire-agent served no SVID: %w%s", err, logTail(filepath.Join(dir, "agent.log")))
	}
	return a, nil
}

// registrationToSVID is the time from creating a registration entry for a new
// SPIFFE ID (selecting this process) to a workload of the running agent getting
// its SVID.
func (s *spireProc) registrationToSVID(path string) (time.Duration, error) {
	id := spiffeid.RequireFromPath(td, path)
	start := time.Now()
	if err := s.register(path); err != nil {
		return 0, err
	}
	err := poll(60*time.Second, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr("unix://"+s.socket))
		if err == nil && !slices.ContainsFunc(svids, func(svid *x509svid.SVID) bool { return svid.ID == id }) {
			err = errors.New(id.String() + " not served yet")
		}
		return err
	})
	return time.Since(start), err
}

// poll calls f every interval until it succeeds or timeout passes.
func poll(timeout, every time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}

// startLogged starts cmd with its output in a log file: SPIRE logs an error for
// every fetch by a workload it has no identity for yet, as while we poll.
func startLogged(cmd *exec.Cmd, log string) error {
	f, err := os.Create(log)
	if err != nil {
		return err
	}
	defer f.Close() // the child has its own copy
	cmd.Stdout, cmd.Stderr = f, f
	return cmd.Start()
}

// logTail is the end of a log, to explain a failure.
func logTail(log string) string {
	b, _ := os.ReadFile(log)
	return "\n" + log + ":\n" + string(b[max(0, len(b)-2000):])
}

// setupSPIRE builds SPIRE (scripts/spire.sh), starts it in a folder of dir, and
// measures its agent's start → first SVID. The fetch loads are run by
// compareFetches together with Palisade's; finish measures the rest.
func setupSPIRE(parent string, starts int) (*spireProc, error) {
	build := exec.Command("scripts/spire.sh")
	build.Stderr = os.Stderr
	version, err := build.Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/spire.sh could not build SPIRE (run from the repository root; see its output above): %w", err)
	}
	dir, err := os.MkdirTemp(parent, "spire-")
	if err != nil {
		return nil, err
	}
	s, err := startSPIRE(dir)
	if err != nil {
		return nil, err
	}
	serverPid, agentPid := s.server.Process.Pid, s.agent.cmd.Process.Pid
	s.serverIdle, _ = proc.Status(serverPid, "VmRSS")
	s.agentIdle, _ = proc.Status(agentPid, "VmRSS")
	fmt.Printf("\n===== baseline: SPIRE, same clients, same machine, same run =====\n%sspire-server pid %d, spire-agent pid %d; trust domain %s, sqlite3 datastore, join_token + unix attestors, default cache reload and sync intervals (5 s)\n",
		version, serverPid, agentPid, td.Name())

	// Agent start → first SVID, with the entries already in the server's cache:
	// the tokens (and so the alias entries) are made first, then the cache reloads.
	tokens := make([]string, starts)
	for i := range tokens {
		if tokens[i], err = s.token(); err != nil {
			return nil, s.stopWith(err)
		}
	}
	time.Sleep(6 * time.Second) // the server's entry cache reloads every 5 s
	var startLat []time.Duration
	for _, token := range tokens {
		// The server admits one node attestation per second from an IP (a
		// default limit); each of these agents stands for a node of its own.
		time.Sleep(1100 * time.Millisecond)
		a, err := s.startAgent(token, 10*time.Second)
		if err != nil {
			return nil, s.stopWith(err)
		}
		startLat = append(startLat, a.firstSVID.Sub(a.started))
		a.stop()
	}
	fmt.Printf("\nSPIRE agent process start → first X.509-SVID fetched from its socket: median %v (of %d; min %v, max %v)\n",
		proc.Median(startLat).Round(time.Microsecond), starts, proc.Percentile(startLat, 0).Round(time.Microsecond), proc.Percentile(startLat, 1).Round(time.Microsecond))
	return s, nil
}

// stopWith stops SPIRE and returns err.
func (s *spireProc) stopWith(err error) error {
	s.stop()
	return err
}

// finish measures SPIRE's memory after the fetch loads and how long a new
// registration entry takes to reach a running agent.
func (s *spireProc) finish(starts int) error {
	serverPid, agentPid := s.server.Process.Pid, s.agent.cmd.Process.Pid

	serverRSS, _ := proc.Status(serverPid, "VmRSS")
	serverHWM, _ := proc.Status(serverPid, "VmHWM")
	agentRSS, _ := proc.Status(agentPid, "VmRSS")
	agentHWM, _ := proc.Status(agentPid, "VmHWM")

	// Registration entry → SVID, after the fetch loads: each new entry adds an
	// SVID to what this process is served.
	var regLat []time.Duration
	for i := range starts {
		d, err := s.registrationToSVID(fmt.Sprintf("/ns/bench/sa/new-%d", i))
		if err != nil {
			return err
		}
		regLat = append(regLat, d)
	}
	fmt.Printf("\nSPIRE registration entry created → its SVID fetched from the running agent: median %v (of %d; min %v, max %v)\n",
		proc.Median(regLat).Round(time.Millisecond), starts, proc.Percentile(regLat, 0).Round(time.Millisecond), proc.Percentile(regLat, 1).Round(time.Millisecond))
	fmt.Printf("\nSPIRE RSS: spire-server %d MB after setup, %d MB after the fetch load (peak %d MB); spire-agent %d MB idle, %d MB after the fetch load (peak %d MB)\n",
		s.serverIdle>>20, serverRSS>>20, serverHWM>>20, s.agentIdle>>20, agentRSS>>20, agentHWM>>20)
	return nil
}
