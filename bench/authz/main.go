// Command authz-bench measures Palisade's ext_authz endpoint as Envoy uses it, side
// by side with two other ext_authz gRPC servers deciding the same CheckRequests:
//
//   - Palisade: the real palisaded, deciding by the config directory's policies;
//   - the floor: a server that allows everything without looking (gRPC's cost);
//   - OPA-Envoy: the CheckRequest through protojson into a generic map
//     (authz.InputViaJSON, plus input.palisade.workload, which the mesh library
//     needs), evaluated by a query prepared the straightforward way (rego.New
//     with the modules and an in-memory store, no inter-query cache, so no cache
//     of verified JWTs either) from the same policy (authz.Policy of the same
//     config directory).
//
// Every server is a process of its own pinned to one CPU (-server-cpu, with
// GOMAXPROCS=1); the load generator is another process pinned to another CPU
// (-load-cpu). For each scenario (a config directory and a cycle of requests,
// some allowed, some denied), concurrency and repetition, the servers take turns
// (the order rotates); the medians over repetitions of throughput, latency
// percentiles, the server's CPU time per decision and its RSS are reported. The
// allow/deny decisions of Palisade and OPA-Envoy must agree, or the program fails.
// Then the cost of decision logging (palisaded --decision-log), and single
// decisions in process as palisaded makes them (100 policies among them; -inprocess
// measures only those). Scenarios are in scenarios.go and testdata/; -json writes
// every raw figure.
//
// Run from the repository root: go run ./bench/authz (about 8 minutes with the
// defaults; -reps 1 -duration 200ms for a quick look).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
	"github.com/palisade-mesh/palisade/bench/internal/proc"
)

type options struct {
	reps             int
	duration, warmup time.Duration
	concurrency      []int
	scenarios        []string
	jsonFile         string
	inProcessOnly    bool
	noInProcess      bool
	inProcessTime    time.Duration
	decisions        int
	testdata         string
	serverCPU        string
	loadCPU          string
	logCallers       int
	verifyCycles     int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-serve" {
		if err := child(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "authz-bench %s: %v\n", strings.Join(os.Args[1:min(3, len(os.Args))], " "), err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.reps, "reps", 5, "repetitions of each measurement; medians are reported")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each measured load")
	flag.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "load before each measurement, not measured (each server also gets 4× this once before the first)")
	concurrency := flag.String("concurrency", "1,16,64", "numbers of concurrent callers, comma-separated (over min(callers, 4) gRPC connections)")
	scenarios := flag.String("scenarios", "small,jwt", "scenarios, comma-separated: small, jwt (testdata/), policies100 (policygen's mesh of 100 policies)")
	flag.StringVar(&o.jsonFile, "json", "", "write every raw result to this file, as JSON")
	flag.BoolVar(&o.inProcessOnly, "inprocess", false, "only measure single decisions in process (by default measured after the servers)")
	flag.BoolVar(&o.noInProcess, "no-inprocess", false, "skip the in-process measurement")
	flag.IntVar(&o.decisions, "decisions", 20000, "decisions timed in process per scenario and way (at most; see -inprocess-time)")
	flag.DurationVar(&o.inProcessTime, "inprocess-time", 10*time.Second, "time budget of the decisions timed in process per scenario and way (at least 2000 are timed)")
	flag.StringVar(&o.testdata, "testdata", "bench/authz/testdata", "directory of the scenarios' config directories and signing key")
	flag.StringVar(&o.serverCPU, "server-cpu", "0", "CPU (taskset list) every server process is pinned to")
	flag.StringVar(&o.loadCPU, "load-cpu", "1", "CPU (taskset list) the load generator and the in-process measurement are pinned to")
	flag.IntVar(&o.logCallers, "log-concurrency", 16, "callers of the decision-logging comparison")
	flag.IntVar(&o.verifyCycles, "verify-cycles", 10, "cycles of each scenario's requests sent to every server, one at a time, to compare their decisions")
	flag.Parse()
	var err error
	if o.concurrency, err = intList(*concurrency); err != nil {
		fmt.Fprintln(os.Stderr, "authz-bench: -concurrency:", err)
		os.Exit(2)
	}
	o.scenarios = strings.Split(*scenarios, ",")
	for _, name := range o.scenarios {
		if !slices.Contains(scenarioNames, name) {
			fmt.Fprintf(os.Stderr, "authz-bench: -scenarios: unknown scenario %q (have %s)\n", name, strings.Join(scenarioNames, ", "))
			os.Exit(2)
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "authz-bench:", err)
		os.Exit(1)
	}
}

// child runs one of the processes the orchestrator starts: -serve floor|opa-envoy
// (a server), load (the load generator) or inprocess.
func child(args []string) error {
	fs := flag.NewFlagSet("authz-bench -serve", flag.ContinueOnError)
	kind := fs.String("serve", "", "")
	addr := fs.String("addr", "", "")
	configDir := fs.String("config", "", "")
	scenarioName := fs.String("scenario", "", "")
	keyFile := fs.String("key", "", "")
	expect := fs.String("expect", "", "")
	testdata := fs.String("testdata", "", "")
	callers := fs.Int("callers", 1, "")
	conns := fs.Int("conns", 1, "")
	decisions := fs.Int("decisions", 0, "")
	warmup := fs.Duration("warmup", 0, "")
	budget := fs.Duration("budget", 0, "")
	duration := fs.Duration("duration", 0, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *kind {
	case "floor", "opa-envoy":
		return serve(*kind, *configDir, *addr)
	case "load":
		sc, err := loadScenario(*scenarioName, *configDir, *keyFile)
		if err != nil {
			return err
		}
		exp, err := parseExpect(*expect, len(sc.variants))
		if err != nil {
			return err
		}
		return runLoad(loadOptions{addr: *addr, variants: sc.variants, expect: exp, callers: *callers, conns: *conns, warmup: *warmup, duration: *duration})
	case "inprocess":
		return runInProcess(*testdata, *decisions, *budget)
	}
	return fmt.Errorf("unknown -serve %q", *kind)
}

// results is everything measured, as -json writes it.
type results struct {
	Machine   machine
	Settings  settings
	Scenarios []*scenarioResult
	InProcess []inProcessResult
	// Problems are the decisions that differ from what the scenarios' policies
	// are written to give, where Palisade and OPA-Envoy agree.
	Problems []string
}

type machine struct {
	CPUs          int
	Model, Kernel string
	Go            string
}

type settings struct {
	Reps                   int
	Duration, Warmup       time.Duration
	Concurrency            []int
	Scenarios              []string
	ServerCPU, LoadCPU     string
	LogCallers             int
	InProcessDecisions     int
	VerifyCyclesPerVariant int
}

type scenarioResult struct {
	Name, About, ConfigDir string
	Variants               []variantResult
	// Verification counts the decisions of the verification pass by server.
	Verification []counts
	Runs         []runResult
	Summary      []summary
	// DecisionLog compares Palisade without and with --decision-log.
	DecisionLogRuns    []runResult
	DecisionLogSummary []summary
}

type variantResult struct {
	Name     string
	Expected string
	// Decisions by server: "allow", "deny 403", "deny 401".
	Decisions map[string]string
}

type counts struct {
	Server          string
	Allowed, Denied int
}

// runResult is one measured load on one server.
type runResult struct {
	Server                                 string
	Callers, Rep                           int
	Throughput                             float64 // decisions per second
	P50, P99, P999                         time.Duration
	CPUPerDecision                         time.Duration // the server's
	RSS                                    int64         // the server's, after the load
	Decisions, Allowed, Denied, Mismatched int64
	Total, Errors                          int64
	// With --decision-log: bytes and lines written, and entries dropped, during
	// the whole run (warm-up included).
	LogBytes, LogLines, LogDropped int64 `json:",omitempty"`
}

// summary is the medians of a server's runs at one concurrency.
type summary struct {
	Server             string
	Callers            int
	Throughput         float64
	P50, P99, P999     time.Duration
	CPUPerDecision     time.Duration
	RSS                int64
	Allowed, Denied    int64   // summed over the repetitions
	LogBytesPerEntry   float64 `json:",omitempty"`
	LogDroppedFraction float64 `json:",omitempty"`
}

// The servers' names.
const (
	palisade    = "Palisade"
	floor       = "floor"
	opaEnvoyS   = "OPA-Envoy"
	palisadeLog = "Palisade + decision log"
)

type bench struct {
	o         options
	self      string // this program, re-executed for the servers and the load
	dir       string
	palisaded string // the binary
	res       *results
}

func run(o options) error {
	if _, err := proc.Taskset(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "authz-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bench{o: o, self: self, dir: dir, res: &results{Machine: machineInfo(), Settings: settings{
		Reps: o.reps, Duration: o.duration, Warmup: o.warmup, Concurrency: o.concurrency, Scenarios: o.scenarios,
		ServerCPU: o.serverCPU, LoadCPU: o.loadCPU, LogCallers: o.logCallers, InProcessDecisions: o.decisions, VerifyCyclesPerVariant: o.verifyCycles,
	}}}
	m := b.res.Machine
	fmt.Printf("# authz-bench\n\nmachine: %d CPUs (nproc), %s, Linux %s, %s\n", m.CPUs, m.Model, m.Kernel, m.Go)
	if m.CPUs < 2 {
		fmt.Println("\nWARNING: fewer than 2 CPUs: the servers and the load generator share one; the figures mean little.")
	}
	var failure error
	if !o.inProcessOnly {
		fmt.Printf("servers pinned to CPU %s (GOMAXPROCS=1 each), load generator to CPU %s (GOMAXPROCS=1); %d repetitions × %v measured after %v of warm-up; servers interleaved, order rotated; medians over repetitions.\n",
			o.serverCPU, o.loadCPU, o.reps, o.duration, o.warmup)
		if b.palisaded, err = proc.Build(dir, "palisaded"); err != nil {
			return err
		}
		for _, name := range o.scenarios {
			sc, err := newScenario(name, o.testdata, dir)
			if err != nil {
				return err
			}
			r, err := b.scenario(sc)
			if r != nil {
				b.res.Scenarios = append(b.res.Scenarios, r)
			}
			if err != nil {
				failure = fmt.Errorf("scenario %s: %w", name, err)
				break
			}
			printScenario(r)
		}
		if failure == nil {
			printDecisionLog(b.res.Scenarios)
		}
	}
	if failure == nil && !o.noInProcess {
		if b.res.InProcess, err = b.inProcess(); err != nil {
			failure = fmt.Errorf("in process: %w", err)
		} else {
			printInProcess(b.res.InProcess, o.loadCPU)
			for _, r := range b.res.InProcess {
				if r.Mismatched > 0 {
					b.res.Problems = append(b.res.Problems, fmt.Sprintf("in process, %s, %s: %d decisions differ from the policies' intent (%s)", r.Scenario, r.Way, r.Mismatched, strings.Join(r.MismatchedVariants, "; ")))
				}
			}
		}
	}
	if len(b.res.Problems) > 0 {
		fmt.Println("\n## Problems\n\nDecisions that differ from what the scenarios' policies are written to give (Palisade and OPA-Envoy agree on them):")
		for _, p := range b.res.Problems {
			fmt.Println("- " + p)
		}
	}
	if o.jsonFile != "" {
		bs, _ := json.MarshalIndent(b.res, "", "  ")
		if err := os.WriteFile(o.jsonFile, append(bs, '\n'), 0o644); err != nil {
			return errors.Join(failure, err)
		}
	}
	return failure
}

func machineInfo() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Model: "unknown CPU"}
	if bs, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(bs), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	if bs, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(bs))
	}
	return m
}

// server is a running ext_authz server.
type server struct {
	name, addr string
	pid        int
	stop       func()
	expect     string // the decisions its load runs must make ("": any)
	monAddr    string // palisaded's monitoring address
	logFile    string // palisaded's --decision-log
}

func (b *bench) scenario(sc *scenario) (*scenarioResult, error) {
	res := &scenarioResult{Name: sc.name, About: sc.about, ConfigDir: sc.configDir}
	pal, err := b.startPalisaded(palisade, sc)
	if err != nil {
		return nil, err
	}
	defer pal.stop()
	fl, err := b.startChild(floor, "floor", sc)
	if err != nil {
		return nil, err
	}
	defer fl.stop()
	oe, err := b.startChild(opaEnvoyS, "opa-envoy", sc)
	if err != nil {
		return nil, err
	}
	defer oe.stop()
	servers := []*server{pal, fl, oe}
	if err := b.verify(sc, servers, res); err != nil {
		return res, err
	}
	for _, s := range servers {
		if _, err := b.measure(s, sc, 16, -1, b.o.warmup*4, b.o.warmup); err != nil {
			return res, fmt.Errorf("warming up %s: %w", s.name, err)
		}
	}
	for rep := range b.o.reps {
		for ci, callers := range b.o.concurrency {
			for k := range servers {
				s := servers[(k+rep+ci)%len(servers)]
				r, err := b.measure(s, sc, callers, rep, b.o.warmup, b.o.duration)
				if err != nil {
					return res, fmt.Errorf("%s, %d callers: %w", s.name, callers, err)
				}
				res.Runs = append(res.Runs, r)
			}
		}
	}
	res.Summary = summarize(res.Runs, []string{palisade, opaEnvoyS, floor}, b.o.concurrency)

	// Decision logging: Palisade without and with --decision-log, taking turns.
	withLog, err := b.startPalisaded(palisadeLog, sc, "--decision-log", filepath.Join(b.dir, sc.name+"-decisions.log"))
	if err != nil {
		return res, err
	}
	defer withLog.stop()
	if err := b.verify(sc, []*server{pal, withLog}, nil); err != nil {
		return res, err
	}
	if _, err := b.measure(withLog, sc, 16, -1, b.o.warmup*4, b.o.warmup); err != nil {
		return res, fmt.Errorf("warming up %s: %w", withLog.name, err)
	}
	pair := []*server{pal, withLog}
	for rep := range b.o.reps {
		for k := range pair {
			s := pair[(k+rep)%2]
			r, err := b.measure(s, sc, b.o.logCallers, rep, b.o.warmup, b.o.duration)
			if err != nil {
				return res, fmt.Errorf("%s: %w", s.name, err)
			}
			res.DecisionLogRuns = append(res.DecisionLogRuns, r)
		}
	}
	res.DecisionLogSummary = summarize(res.DecisionLogRuns, []string{palisade, palisadeLog}, []int{b.o.logCallers})
	return res, nil
}

// startPalisaded starts palisaded pinned to the server CPU and waits until its
// policy is in force.
func (b *bench) startPalisaded(name string, sc *scenario, extra ...string) (*server, error) {
	dir, err := os.MkdirTemp(b.dir, "palisaded-")
	if err != nil {
		return nil, err
	}
	p, err := proc.StartPalisadedPinned(b.o.serverCPU, 1, b.palisaded, dir, sc.configDir, extra...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s := &server{name: name, addr: p.AuthzAddr, pid: p.Cmd.Process.Pid, stop: p.Stop, monAddr: p.MonAddr}
	if len(extra) == 2 && extra[0] == "--decision-log" {
		s.logFile = extra[1]
	}
	err = p.WaitPolicy(60 * time.Second)
	if err == nil {
		err = waitDecisions(s.addr, sc.variants[0].Request, 10*time.Second, true)
	}
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

// startChild starts a server of this program (-serve kind) pinned to the server
// CPU and waits until it answers.
func (b *bench) startChild(name, kind string, sc *scenario) (*server, error) {
	addr := proc.FreeAddr()
	cmd, err := proc.Pinned(b.o.serverCPU, 1, b.self, "-serve", kind, "-config", sc.configDir, "-addr", addr)
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s := &server{name: name, addr: addr, pid: cmd.Process.Pid, stop: func() { _ = cmd.Process.Kill(); <-exited }}
	ready := make(chan error, 1)
	go func() { ready <- waitDecisions(addr, sc.variants[0].Request, 30*time.Second, false) }()
	select {
	case err = <-ready:
	case <-exited:
		err = errors.New("exited")
	}
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}

// waitDecisions polls Check on addr until it answers; with policy, until the
// answer is not the denial palisaded gives before its policy is in force.
func waitDecisions(addr string, req *authv3.CheckRequest, timeout time.Duration, policy bool) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := client.Check(ctx, req)
		cancel()
		if err == nil && !(policy && resp.GetStatus().GetMessage() == "no policy is loaded") {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New(`still answering "no policy is loaded"`)
			}
			return fmt.Errorf("no decisions from %s within %v: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// decision is one server's answer to one variant.
type decision struct {
	allowed bool
	status  int
	reason  string
}

func (d decision) String() string {
	if d.allowed {
		return "allow"
	}
	return fmt.Sprintf("deny %d", d.status)
}

// verify sends every variant of the scenario verifyCycles times, one at a time, to
// each server, and compares the decisions of every server but the floor: they must
// be equal, variant for variant. res (if not nil) receives the counts and the
// decisions; the servers receive the decisions their loads must make.
func (b *bench) verify(sc *scenario, servers []*server, res *scenarioResult) error {
	all := map[string][]decision{}
	for _, s := range servers {
		ds, c, err := verifyServer(s, sc, max(1, b.o.verifyCycles))
		if err != nil {
			return err
		}
		all[s.name] = ds
		if res != nil {
			res.Verification = append(res.Verification, c)
		}
	}
	var ref *server
	var diffs []string
	for _, s := range servers {
		if s.name == floor {
			continue
		}
		if ref == nil {
			ref = s
		}
		for i, v := range sc.variants {
			a, d := all[ref.name][i], all[s.name][i]
			if a.allowed != d.allowed || a.status != d.status {
				diffs = append(diffs, fmt.Sprintf("  %-40s %s: %-8s (%s)  %s: %-8s (%s)", v.Name, ref.name, a, a.reason, s.name, d, d.reason))
			}
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("the servers decide differently:\n%s", strings.Join(diffs, "\n"))
	}
	allowed := make([]bool, len(sc.variants))
	for i := range allowed {
		allowed[i] = all[ref.name][i].allowed
	}
	for _, s := range servers {
		if s.name != floor {
			s.expect = expectString(allowed)
		}
	}
	if res == nil {
		return nil
	}
	for i, v := range sc.variants {
		vr := variantResult{Name: v.Name, Expected: "deny", Decisions: map[string]string{}}
		if v.Allowed {
			vr.Expected = "allow"
		}
		for _, s := range servers {
			vr.Decisions[s.name] = all[s.name][i].String()
		}
		res.Variants = append(res.Variants, vr)
		if got := all[ref.name][i]; got.allowed != v.Allowed {
			b.res.Problems = append(b.res.Problems, fmt.Sprintf("%s: %q is %s, the policies are written to %s it (%s)", sc.name, v.Name, got, vr.Expected, got.reason))
		}
	}
	return nil
}

func verifyServer(s *server, sc *scenario, cycles int) ([]decision, counts, error) {
	c := counts{Server: s.name}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, c, err
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	out := make([]decision, len(sc.variants))
	for cycle := range cycles {
		for i, v := range sc.variants {
			req := proto.Clone(v.Request).(*authv3.CheckRequest)
			policygen.Renew(req, uint64(cycle*len(sc.variants)+i))
			resp, err := client.Check(context.Background(), req)
			if err != nil {
				return nil, c, fmt.Errorf("%s: %s: %w", s.name, v.Name, err)
			}
			allowed, status := decisionOf(resp)
			d := decision{allowed: allowed, status: status, reason: resp.GetStatus().GetMessage()}
			if cycle == 0 {
				out[i] = d
			} else if d.allowed != out[i].allowed || d.status != out[i].status {
				return nil, c, fmt.Errorf("%s: %s: decided %s, then %s", s.name, v.Name, out[i], d)
			}
			if allowed {
				c.Allowed++
			} else {
				c.Denied++
			}
		}
	}
	return out, c, nil
}

// measure runs the load generator against s: callers concurrent callers, warm-up,
// then duration measured. It reads the server's CPU time when the measured window
// starts and ends, and its RSS at the end. rep < 0 is a warm-up run, whose
// figures do not matter.
func (b *bench) measure(s *server, sc *scenario, callers, rep int, warmup, duration time.Duration) (runResult, error) {
	r := runResult{Server: s.name, Callers: callers, Rep: rep}
	cmd, err := proc.Pinned(b.o.loadCPU, 1, b.self, "-serve", "load", "-addr", s.addr, "-scenario", sc.name, "-config", sc.configDir,
		"-key", sc.keyFile, "-callers", strconv.Itoa(callers), "-conns", strconv.Itoa(min(callers, 4)),
		"-warmup", warmup.String(), "-duration", duration.String(), "-expect", s.expect)
	if err != nil {
		return r, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	var dropped0 float64
	if s.logFile != "" {
		if err := os.Truncate(s.logFile, 0); err != nil {
			return r, err
		}
		if dropped0, err = proc.Metric(s.monAddr, "palisade_authz_decision_log_dropped_total"); err != nil {
			return r, err
		}
	}
	if err := cmd.Start(); err != nil {
		return r, err
	}
	lines := bufio.NewScanner(stdout)
	var cpu0, cpu1 time.Duration
	var result loadResult
	var protocolErr error
	for _, want := range []string{"measuring", "done", "result"} {
		if !lines.Scan() {
			protocolErr = fmt.Errorf("the load generator stopped before %q", want)
			break
		}
		switch want {
		case "measuring", "done":
			if lines.Text() != want {
				protocolErr = fmt.Errorf("the load generator said %q, want %q", lines.Text(), want)
				break
			}
			cpu, err := proc.CPUTime(s.pid)
			if err != nil {
				protocolErr = err
			}
			if want == "measuring" {
				cpu0 = cpu
			} else {
				cpu1 = cpu
				r.RSS, _ = proc.Status(s.pid, "VmRSS")
			}
		default:
			protocolErr = json.Unmarshal(lines.Bytes(), &result)
		}
		if protocolErr != nil {
			break
		}
	}
	if protocolErr != nil {
		_ = cmd.Process.Kill()
	}
	if err := cmd.Wait(); err != nil || protocolErr != nil {
		return r, errors.Join(protocolErr, err)
	}
	r.Decisions, r.Allowed, r.Denied, r.Mismatched = result.Decisions, result.Allowed, result.Denied, result.Mismatched
	r.Total, r.Errors = result.Total, result.Errors
	r.P50, r.P99, r.P999 = result.P50, result.P99, result.P999
	switch {
	case result.Errors > 0:
		return r, fmt.Errorf("%d of %d calls failed, first: %s", result.Errors, result.Total, result.FirstError)
	case rep < 0: // a warm-up: only errors count
		return r, nil
	case result.Decisions == 0:
		return r, errors.New("no decision in the measured window")
	case result.Mismatched > 0:
		return r, fmt.Errorf("%d of %d decisions differ from those of the verification pass", result.Mismatched, result.Decisions)
	}
	r.Throughput = float64(result.Decisions) / result.Window.Seconds()
	r.CPUPerDecision = (cpu1 - cpu0) / time.Duration(result.Decisions)
	if s.logFile != "" {
		if err := b.logStats(s, &r, dropped0); err != nil {
			return r, err
		}
	}
	return r, nil
}

// logStats notes what palisaded's decision log wrote and dropped during a run,
// once it has written what it buffered.
func (b *bench) logStats(s *server, r *runResult, dropped0 float64) error {
	var size int64 = -1
	for range 100 {
		fi, err := os.Stat(s.logFile)
		if err != nil {
			return err
		}
		if fi.Size() == size {
			break
		}
		size = fi.Size()
		time.Sleep(50 * time.Millisecond)
	}
	bs, err := os.ReadFile(s.logFile)
	if err != nil {
		return err
	}
	dropped1, err := proc.Metric(s.monAddr, "palisade_authz_decision_log_dropped_total")
	if err != nil {
		return err
	}
	r.LogBytes, r.LogLines, r.LogDropped = int64(len(bs)), int64(bytes.Count(bs, []byte{'\n'})), int64(dropped1-dropped0)
	return nil
}

// summarize takes the medians of each server's runs at each concurrency.
func summarize(runs []runResult, servers []string, concurrency []int) []summary {
	var out []summary
	for _, callers := range concurrency {
		for _, name := range servers {
			var thr, bpe, dropped []float64
			var p50, p99, p999, cpu []time.Duration
			var rss []float64
			s := summary{Server: name, Callers: callers}
			for _, r := range runs {
				if r.Server != name || r.Callers != callers {
					continue
				}
				thr = append(thr, r.Throughput)
				p50, p99, p999, cpu = append(p50, r.P50), append(p99, r.P99), append(p999, r.P999), append(cpu, r.CPUPerDecision)
				rss = append(rss, float64(r.RSS))
				s.Allowed += r.Allowed
				s.Denied += r.Denied
				if r.LogLines > 0 {
					bpe = append(bpe, float64(r.LogBytes)/float64(r.LogLines))
				}
				if r.Total > 0 && r.LogBytes > 0 {
					dropped = append(dropped, float64(r.LogDropped)/float64(r.Total))
				}
			}
			if len(thr) == 0 {
				continue
			}
			s.Throughput = proc.MedianF(thr)
			s.P50, s.P99, s.P999, s.CPUPerDecision = proc.Median(p50), proc.Median(p99), proc.Median(p999), proc.Median(cpu)
			s.RSS = int64(proc.MedianF(rss))
			if len(bpe) > 0 {
				s.LogBytesPerEntry = proc.MedianF(bpe)
			}
			if len(dropped) > 0 {
				s.LogDroppedFraction = proc.MedianF(dropped)
			}
			out = append(out, s)
		}
	}
	return out
}

// inProcess runs the in-process measurement pinned to the load CPU.
func (b *bench) inProcess() ([]inProcessResult, error) {
	cmd, err := proc.Pinned(b.o.loadCPU, 1, b.self, "-serve", "inprocess", "-testdata", b.o.testdata, "-decisions", strconv.Itoa(b.o.decisions), "-budget", b.o.inProcessTime.String())
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		return nil, err
	}
	var rs []inProcessResult
	return rs, json.Unmarshal(out, &rs)
}

// ---------------------------------------------------------------------------
// Tables.

func printScenario(r *scenarioResult) {
	fmt.Printf("\n## Scenario %s: %s\n\n", r.Name, r.About)
	fmt.Printf("Requests: a cycle of %d variants. Decisions of the verification pass (each variant sent to each server, one at a time):\n\n", len(r.Variants))
	fmt.Println("| variant | written to | Palisade | OPA-Envoy | floor |")
	fmt.Println("|---|---|---|---|---|")
	for _, v := range r.Variants {
		fmt.Printf("| %s | %s | %s | %s | %s |\n", v.Name, v.Expected, v.Decisions[palisade], v.Decisions[opaEnvoyS], v.Decisions[floor])
	}
	fmt.Println()
	fmt.Println("| server | allowed | denied |")
	fmt.Println("|---|---:|---:|")
	for _, c := range r.Verification {
		fmt.Printf("| %s | %d | %d |\n", c.Server, c.Allowed, c.Denied)
	}
	fmt.Println()
	fmt.Println("| callers | server | decisions/s | p50 | p99 | p99.9 | server CPU/decision | server RSS | throughput vs OPA-Envoy | p99 vs OPA-Envoy | CPU/decision vs floor | allowed / denied (measured) |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	find := func(name string, callers int) *summary {
		for i := range r.Summary {
			if r.Summary[i].Server == name && r.Summary[i].Callers == callers {
				return &r.Summary[i]
			}
		}
		return nil
	}
	for _, s := range r.Summary {
		oe, fl := find(opaEnvoyS, s.Callers), find(floor, s.Callers)
		thr, p99, cpu := "", "", ""
		if oe != nil && s.Server != opaEnvoyS {
			thr = fmt.Sprintf("%.2f×", s.Throughput/oe.Throughput)
			p99 = fmt.Sprintf("%.2f×", float64(s.P99)/float64(oe.P99))
		}
		if fl != nil && s.Server != floor && fl.CPUPerDecision > 0 {
			cpu = fmt.Sprintf("%.1f×", float64(s.CPUPerDecision)/float64(fl.CPUPerDecision))
		}
		fmt.Printf("| %d | %s | %.0f | %s | %s | %s | %s | %d MB | %s | %s | %s | %d / %d |\n", s.Callers, s.Server, s.Throughput,
			dur(s.P50), dur(s.P99), dur(s.P999), dur(s.CPUPerDecision), s.RSS>>20, thr, p99, cpu, s.Allowed, s.Denied)
	}
}

func printDecisionLog(scenarios []*scenarioResult) {
	if len(scenarios) == 0 {
		return
	}
	fmt.Printf("\n## Decision logging (palisaded --decision-log FILE, %d callers)\n\n", scenarios[0].DecisionLogSummary[0].Callers)
	fmt.Println("| scenario | server | decisions/s | p50 | p99 | server CPU/decision | log bytes/entry | entries dropped | throughput with log / without |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range scenarios {
		var without float64
		for _, s := range r.DecisionLogSummary {
			ratio, bpe, dropped := "", "", ""
			if s.Server == palisade {
				without = s.Throughput
			} else if without > 0 {
				ratio = fmt.Sprintf("%.2f×", s.Throughput/without)
				bpe = fmt.Sprintf("%.0f", s.LogBytesPerEntry)
				dropped = fmt.Sprintf("%.1f%%", 100*s.LogDroppedFraction)
			}
			fmt.Printf("| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", r.Name, s.Server, s.Throughput, dur(s.P50), dur(s.P99), dur(s.CPUPerDecision), bpe, dropped, ratio)
		}
	}
}

func printInProcess(rs []inProcessResult, cpu string) {
	fmt.Printf("\n## In process: single decisions of the mesh's policies\n\nOne goroutine, pinned to CPU %s, GOMAXPROCS=1 (the garbage collector shares the CPU); each decision timed alone. Palisade: authz.Decide, as palisaded decides: the workload's native decision (Go matchers compiled from its policies, read from the CheckRequest) where it has one, else its compiled Rego or the library on the parts of the input the query reads. OPA-Envoy: authz.InputViaJSON (+ input.palisade.workload), then Eval of a straightforwardly prepared query with rego.EvalInput. Target: the mesh library with 100 policies under 50 µs p99. The machine baseline is fixed work timed the same way: what the machine alone does to the tail.\n\n", cpu)
	fmt.Println("| scenario | way | decisions | p50 | p99 | p99.9 | mean | Eval alone p50 / p99 | allocs/decision | KB/decision | allowed / denied |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rs {
		target := ""
		if r.Scenario == "policies100" && r.Way == palisade {
			target = " (target p99 < 50µs: " + map[bool]string{true: "met", false: "NOT met"}[r.DecisionP99 < 50*time.Microsecond] + ")"
		}
		fmt.Printf("| %s: %s | %s | %d | %s | %s%s | %s | %s | %s / %s | %.0f | %.1f | %d / %d |\n", r.Scenario, r.About, r.Way, r.Decisions,
			dur(r.DecisionP50), dur(r.DecisionP99), target, dur(r.DecisionP999), dur(r.Mean), dur(r.EvalP50), dur(r.EvalP99),
			r.AllocsPerDecision, r.BytesPerDecision/1024, r.Allowed, r.Denied)
	}
}

// dur formats a duration to three significant digits or so.
func dur(d time.Duration) string {
	switch {
	case d <= 0:
		return "–"
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.2fµs", float64(d)/1e3)
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return d.Round(time.Millisecond).String()
}
