// Package proc holds what the benchmark programs share: building and watching the
// real binaries they measure, and summarising latencies.
package proc

import (
	"fmt"
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

// IsolatedFlags are the palisaded flags that keep a benchmark's instance apart
// from any other on the machine: its own data directory and CA ports.
func IsolatedFlags(dir string) []string {
	return []string{"--data-dir", filepath.Join(dir, "data"), "--ca-address", FreeAddr(), "--bundle-endpoint-address", FreeAddr()}
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
