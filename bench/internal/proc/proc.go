// Package proc holds what the benchmark programs share: building and watching the
// real binaries they measure, and summarising latencies.
package proc

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Build builds ./cmd/NAME into dir and returns the binary's path. Run from the
// repository root.
func Build(dir, name string) (string, error) {
	binary := filepath.Join(dir, name)
	build := exec.Command("go", "build", "-o", binary, "./cmd/"+name)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building %s (run from the repository root): %w", name, err)
	}
	return binary, nil
}

// FreeAddr returns a loopback address that was free a moment ago.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// WaitReady polls http://addr/healthz/ready until it answers 200.
func WaitReady(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %v", addr, timeout)
}

// Status reads a memory figure (VmHWM: peak RSS, VmRSS: current) of a process,
// in bytes.
func Status(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc status", field)
}

// Median of durations.
func Median(d []time.Duration) time.Duration { return Percentile(d, 0.5) }

// Percentile p (0..1) of durations, nearest rank.
func Percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// MedianF is the median of numbers.
func MedianF(f []float64) float64 {
	s := slices.Clone(f)
	slices.Sort(s)
	return s[len(s)/2]
}

// Palisaded is a running palisaded, on free loopback ports and a data directory
// of its own, so that it stays apart from any other on the machine.
type Palisaded struct {
	Cmd                                 *exec.Cmd
	XDSAddr, MonAddr, CAAddr, AuthzAddr string
	BundleAddr                          string // OPA policy bundles: GET /bundles/palisade
	DataDir                             string
}

// StartPalisaded starts binary on configDir with state under dir, plus extra flags,
// and waits until it is ready.
func StartPalisaded(binary, dir, configDir string, extra ...string) (*Palisaded, error) {
	return startPalisaded(exec.Command, binary, dir, configDir, extra...)
}

// StartPalisadedPinned is StartPalisaded with palisaded running as Pinned runs a
// command: on the CPUs cpus only, with GOMAXPROCS=procs.
func StartPalisadedPinned(cpus string, procs int, binary, dir, configDir string, extra ...string) (*Palisaded, error) {
	if _, err := Taskset(); err != nil {
		return nil, err
	}
	return startPalisaded(func(name string, args ...string) *exec.Cmd {
		cmd, _ := Pinned(cpus, procs, name, args...) // fails only without taskset
		return cmd
	}, binary, dir, configDir, extra...)
}

func startPalisaded(command func(string, ...string) *exec.Cmd, binary, dir, configDir string, extra ...string) (*Palisaded, error) {
	p := &Palisaded{XDSAddr: FreeAddr(), MonAddr: FreeAddr(), CAAddr: FreeAddr(), AuthzAddr: FreeAddr(), BundleAddr: FreeAddr(), DataDir: filepath.Join(dir, "data")}
	args := append([]string{"--config-dir", configDir, "--xds-address", p.XDSAddr, "--monitoring-address", p.MonAddr,
		"--data-dir", p.DataDir, "--ca-address", p.CAAddr, "--bundle-endpoint-address", FreeAddr(),
		"--authz-address", p.AuthzAddr, "--policy-bundle-address", p.BundleAddr, "--log-level", "warn"}, extra...)
	p.Cmd = command(binary, args...)
	p.Cmd.Stderr = os.Stderr
	if err := p.Cmd.Start(); err != nil {
		return nil, err
	}
	if err := WaitReady(p.MonAddr, 30*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// Stop kills palisaded.
func (p *Palisaded) Stop() { _ = p.Cmd.Process.Kill(); _ = p.Cmd.Wait() }

// Fetch saves the body of a GET into file.
func Fetch(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, data, 0o644)
}

// CPUTime is the CPU time a process has used so far (user and system), at the
// kernel's clock-tick resolution.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime, stime
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

// Taskset returns the path of taskset(1), with which Pinned pins processes to CPUs.
func Taskset() (string, error) {
	path, err := exec.LookPath("taskset")
	if err != nil {
		return "", fmt.Errorf("taskset(1) is needed to pin the measured processes to CPUs and was not found in PATH (it is in util-linux: apt-get install util-linux): %w", err)
	}
	return path, nil
}

// Pinned returns a command that runs name with args on the CPUs cpus only (a
// taskset(1) list, e.g. "0" or "2-3"), with GOMAXPROCS=procs in its environment
// (procs <= 0 leaves it unset). taskset execs the command, so the process's PID is
// the command's. Its standard error goes to ours.
func Pinned(cpus string, procs int, name string, args ...string) (*exec.Cmd, error) {
	taskset, err := Taskset()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(taskset, append([]string{"-c", cpus, name}, args...)...)
	cmd.Env = os.Environ()
	if procs > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(procs))
	}
	cmd.Stderr = os.Stderr
	return cmd, nil
}

// Metric returns the value of the first sample of a metric on http://addr/metrics
// whose line starts with name (a metric name, optionally with "{labels}"), or 0 if
// there is none.
func Metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{' && !strings.HasSuffix(name, "}")) {
			continue
		}
		if rest[0] == '{' {
			rest = rest[strings.IndexByte(rest, '}')+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		return strconv.ParseFloat(fields[0], 64)
	}
	return 0, nil
}

// WaitPolicy waits until palisaded has a policy in force: it serves the policy's
// bundle once the policy compiled and the ext_authz server decides by it.
func (p *Palisaded) WaitPolicy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + p.BundleAddr + "/bundles/palisade")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("palisaded has no policy in force after %v (its bundle is not served)", timeout)
}
