// Command identity-bench measures Palisade's identity path as its users meet it:
// a real palisaded and real palisade-agent processes on this machine.
//
//   - SVID issuance through the CA API (mTLS renewals, as agents make them) at
//     concurrency 1 and 32: issuances per second, p50 and p99;
//   - X.509-SVID fetches from the agent's Workload API with go-spiffe's client at
//     concurrency 1 and 8;
//   - agent start → first SVID served, and token created → SVID served;
//   - resident memory of palisaded and of the agent.
//
// Each measurement is repeated (--reps) and the medians reported; the machine is
// shared, so compare runs of this program, not single figures.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/palisade-mesh/palisade/bench/internal/proc"
	"github.com/palisade-mesh/palisade/identity/caclient"
	"github.com/palisade-mesh/palisade/identity/caserver"
	"github.com/palisade-mesh/palisade/identity/identitypb"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func main() {
	duration := flag.Duration("duration", 3*time.Second, "length of each throughput measurement")
	reps := flag.Int("reps", 3, "repetitions of each measurement; medians are reported")
	starts := flag.Int("starts", 7, "agent starts measured")
	profile := flag.String("cpu-profile", "", "write CPU profiles of palisaded during the concurrent issuance load (FILE) and of the agent during the concurrent fetch loads (FILE.agent.CLIENT)")
	spire := flag.Bool("spire", false, "also measure SPIRE 1.13's agent (built by scripts/spire.sh) as the baseline: the same fetch loads, interleaved with Palisade's in each repetition, agent start, registration → SVID, memory; see spire.go")
	flag.Parse()
	if err := run(*duration, *reps, *starts, *profile, *spire); err != nil {
		fmt.Fprintln(os.Stderr, "identity-bench:", err)
		os.Exit(1)
	}
}

type env struct {
	dir, agentBin, caAddr, adminSocket, roots string
}

func run(duration time.Duration, reps, starts int, profile string, spire bool) error {
	dir, err := os.MkdirTemp("", "identity-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	palisaded, err := proc.Build(dir, "palisaded")
	if err != nil {
		return err
	}
	agentBin, err := proc.Build(dir, "palisade-agent")
	if err != nil {
		return err
	}
	p, err := proc.StartPalisaded(palisaded, dir, "examples/mesh")
	if err != nil {
		return err
	}
	defer p.Stop()
	cmd, monAddr := p.Cmd, p.MonAddr
	e := &env{dir: dir, agentBin: agentBin, caAddr: p.CAAddr, adminSocket: filepath.Join(p.DataDir, "admin.sock"), roots: filepath.Join(p.DataDir, "root-cert.pem")}
	idleRSS, _ := proc.Status(cmd.Process.Pid, "VmRSS")
	fmt.Printf("machine: %d CPUs (runtime.NumCPU); palisaded pid %d, RSS at start %d MB\n\n", runtime.NumCPU(), cmd.Process.Pid, idleRSS>>20)

	// 1. Issuance through the CA API.
	fmt.Println("SVID issuance (CA API, mTLS renewals, one connection per caller):")
	for _, conc := range []int{1, 32} {
		m, err := repeat(reps, profileAt(profile, conc, monAddr, ""), duration, func() (float64, []time.Duration, error) {
			return e.issuance(conc, duration)
		})
		if err != nil {
			return err
		}
		fmt.Printf("  concurrency %2d: %s\n", conc, m.format("issuances", reps))
	}
	caRSS, _ := proc.Status(cmd.Process.Pid, "VmRSS")
	caHWM, _ := proc.Status(cmd.Process.Pid, "VmHWM")

	// 2. Agent start → first SVID, and token → SVID.
	var startLat, tokenLat, directLat []time.Duration
	for i := range starts {
		tokenStart := time.Now()
		token, err := e.token(fmt.Sprintf("/ns/bench/sa/start-%d", i))
		if err != nil {
			return err
		}
		a, err := e.startAgent(fmt.Sprintf("/ns/bench/sa/start-%d", i), token)
		if err != nil {
			return err
		}
		startLat = append(startLat, a.firstSVID.Sub(a.started))
		tokenLat = append(tokenLat, a.firstSVID.Sub(tokenStart))
		a.stop()
		d, err := e.tokenToSVID(fmt.Sprintf("/ns/bench/sa/direct-%d", i))
		if err != nil {
			return err
		}
		directLat = append(directLat, d)
	}
	fmt.Printf("\nagent process start → first X.509-SVID fetched from its socket: median %v (of %d; min %v, max %v)\n", proc.Median(startLat), starts, proc.Percentile(startLat, 0), proc.Percentile(startLat, 1))
	fmt.Printf("token created → SVID fetched from a newly started agent: median %v\n", proc.Median(tokenLat))
	fmt.Printf("token created → SVID issued to a CA client (no agent start): median %v\n", proc.Median(directLat))

	// 3. Workload API fetches.
	agentMon := proc.FreeAddr()
	token, err := e.token("/ns/bench/sa/fetch")
	if err != nil {
		return err
	}
	a, err := e.startAgent("/ns/bench/sa/fetch", token, "--monitoring-address", agentMon)
	if err != nil {
		return err
	}
	defer a.stop()
	agentIdle, _ := proc.Status(a.cmd.Process.Pid, "VmRSS")
	agents := []fetchTarget{{name: "Palisade", socket: a.socket, monAddr: agentMon, pid: a.cmd.Process.Pid}}
	floor, floorSocket, err := startFloor(dir, a.socket)
	if err != nil {
		return err
	}
	defer func() { _ = floor.Process.Kill(); _ = floor.Wait() }()
	agents = append(agents, fetchTarget{name: "floor", socket: floorSocket, pid: floor.Process.Pid})
	var sp *spireProc
	if spire {
		if sp, err = setupSPIRE(dir, starts); err != nil {
			return fmt.Errorf("SPIRE: %w", err)
		}
		defer sp.stop()
		agents = append(agents, fetchTarget{name: "SPIRE", socket: sp.socket, pid: sp.agent.cmd.Process.Pid})
	}
	if err := compareFetches(agents, reps, duration, profile); err != nil {
		return err
	}
	agentRSS, _ := proc.Status(a.cmd.Process.Pid, "VmRSS")
	agentHWM, _ := proc.Status(a.cmd.Process.Pid, "VmHWM")
	fmt.Printf("\nRSS: palisaded %d MB at start, %d MB after the issuance load (peak %d MB); agent %d MB idle, %d MB after the fetch load (peak %d MB)\n",
		idleRSS>>20, caRSS>>20, caHWM>>20, agentIdle>>20, agentRSS>>20, agentHWM>>20)
	if sp != nil {
		return sp.finish(starts)
	}
	return nil
}

// fetchTarget is an agent whose Workload API is measured.
type fetchTarget struct {
	name, socket string
	monAddr      string // where its CPU profile can be taken; "" for none
	pid          int    // the agent process, whose CPU time per fetch is reported
}

// compareFetches measures X.509-SVID fetches from each agent with both kinds of
// client at concurrency 1 and 8. The agents take turns within each repetition,
// so that they share the machine's moods alike. One of them is the floor (see
// floor.go): a server that only sends a canned answer, what gRPC alone costs.
func compareFetches(agents []fetchTarget, reps int, d time.Duration, profile string) error {
	for _, kind := range []string{"go-spiffe", "raw"} {
		fmt.Printf("\nWorkload API FetchX509SVID, %s client, one client per caller:\n", kind)
		for _, conc := range []int{1, 8} {
			runs := make([]measurement, len(agents))
			for rep := range reps {
				for i, a := range agents {
					at := profileAt(profile, conc, a.monAddr, ".agent."+kind)
					if rep > 0 || a.monAddr == "" {
						at = profileAt("", conc, "", "")
					}
					cpu0, _ := proc.CPUTime(a.pid)
					m, err := repeat(1, at, d, func() (float64, []time.Duration, error) { return fetchLoad(a.socket, kind, conc, d) })
					if err != nil {
						return fmt.Errorf("%s: %w", a.name, err)
					}
					cpu1, _ := proc.CPUTime(a.pid)
					m.cpuPerCall = []time.Duration{(cpu1 - cpu0) / time.Duration(max(1, m.rates[0]*d.Seconds()))}
					runs[i].add(m)
				}
			}
			for i, a := range agents {
				ratio := ""
				switch {
				case a.name == "floor":
					ratio = fmt.Sprintf("  (Palisade: %.0f%% of the floor's rate)", 100*runs[0].rate()/runs[i].rate())
				case i > 0:
					ratio = fmt.Sprintf("  (Palisade: %.1f× the rate)", runs[0].rate()/runs[i].rate())
				}
				fmt.Printf("  concurrency %d, %-8s %s%s\n", conc, a.name+":", runs[i].format("fetches", reps), ratio)
			}
		}
	}
	return nil
}

// profileAt says where to save a CPU profile of the process serving monAddr
// during a concurrent load ("" for none).
func profileAt(profile string, conc int, monAddr, suffix string) func() (string, string) {
	return func() (string, string) {
		if profile == "" || conc == 1 {
			return "", ""
		}
		return monAddr, profile + suffix
	}
}

// measurement collects the rate, p50 and p99 of repeated runs of a load.
type measurement struct {
	rates      []float64
	p50s, p99s []time.Duration
	cpuPerCall []time.Duration // the server's CPU time per call, where measured
}

func (m *measurement) add(o measurement) {
	m.rates = append(m.rates, o.rates...)
	m.p50s = append(m.p50s, o.p50s...)
	m.p99s = append(m.p99s, o.p99s...)
	m.cpuPerCall = append(m.cpuPerCall, o.cpuPerCall...)
}

func (m measurement) rate() float64 { return proc.MedianF(m.rates) }

func (m measurement) format(unit string, reps int) string {
	cpu := ""
	if len(m.cpuPerCall) > 0 {
		cpu = fmt.Sprintf("  server CPU %v/call", proc.Median(m.cpuPerCall).Round(time.Microsecond))
	}
	return fmt.Sprintf("%6.0f %s/s  p50 %v  p99 %v%s   (medians of %d)", m.rate(), unit,
		proc.Median(m.p50s).Round(time.Microsecond), proc.Median(m.p99s).Round(time.Microsecond), cpu, reps)
}

// repeat runs a throughput measurement reps times; the first run is profiled if
// profileAt says so.
func repeat(reps int, profileAt func() (string, string), d time.Duration, run func() (float64, []time.Duration, error)) (measurement, error) {
	var m measurement
	for rep := range reps {
		var profiled chan error
		if monAddr, file := profileAt(); file != "" && rep == 0 {
			profiled = make(chan error, 1)
			go func() {
				profiled <- proc.Fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", monAddr, int(d.Seconds())), file)
			}()
		}
		rate, lat, err := run()
		if profiled != nil {
			if perr := <-profiled; perr != nil {
				return m, fmt.Errorf("CPU profile: %w", perr)
			}
		}
		if err != nil {
			return m, err
		}
		m.rates, m.p50s, m.p99s = append(m.rates, rate), append(m.p50s, proc.Percentile(lat, 0.5)), append(m.p99s, proc.Percentile(lat, 0.99))
	}
	return m, nil
}

// token creates a bootstrap token through palisaded's admin socket.
func (e *env) token(path string) (string, error) {
	created, err := caserver.CreateToken(context.Background(), e.adminSocket, caserver.CreateTokenRequest{SPIFFEID: spiffeid.RequireFromPath(td, path).String(), TTL: "10m"})
	return created.Token, err
}

func (e *env) client() (*caclient.Client, error) {
	roots, err := x509bundle.Load(td, e.roots)
	if err != nil {
		return nil, err
	}
	return caclient.New(caclient.Config{Address: e.caAddr, TrustDomain: td, Roots: roots.X509Authorities()})
}

// tokenToSVID is the time from creating a token to holding the SVID it grants.
func (e *env) tokenToSVID(path string) (time.Duration, error) {
	c, err := e.client()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	token, err := e.token(path)
	if err != nil {
		return 0, err
	}
	if _, _, err := c.SignWithToken(context.Background(), spiffeid.RequireFromPath(td, path), token, 0); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// issuance runs conc callers renewing an SVID as fast as they can for d. Each
// caller has its own connection, as agents do; CSRs are made beforehand, since
// making them is the agent's cost, not the CA's.
func (e *env) issuance(conc int, d time.Duration) (float64, []time.Duration, error) {
	c, err := e.client()
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	id := spiffeid.RequireFromPath(td, "/ns/bench/sa/issuance")
	token, err := e.token(id.Path())
	if err != nil {
		return 0, nil, err
	}
	svid, bundles, err := c.SignWithToken(context.Background(), id, token, 0)
	if err != nil {
		return 0, nil, err
	}
	csrs := make([][]byte, 64)
	for i := range csrs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if csrs[i], err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key); err != nil {
			return 0, nil, err
		}
	}
	conf := tlsconfig.MTLSClientConfig(svid, bundles, tlsconfig.AuthorizeID(caserver.ServerID(td)))
	callers := make([]func(context.Context) error, conc)
	for w := range callers {
		conn, err := grpc.NewClient(e.caAddr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
		if err != nil {
			return 0, nil, err
		}
		defer conn.Close()
		api := identitypb.NewCertificateAuthorityClient(conn)
		next := w
		callers[w] = func(ctx context.Context) error {
			next++
			_, err := api.SignX509SVID(ctx, &identitypb.SignX509SVIDRequest{Csr: csrs[next%len(csrs)]})
			return err
		}
	}
	return load(callers, d)
}

type agentProc struct {
	cmd                *exec.Cmd
	socket             string
	started, firstSVID time.Time
}

func (a *agentProc) stop() { _ = a.cmd.Process.Kill(); _ = a.cmd.Wait() }

// startAgent starts palisade-agent for an identity and returns once an
// X.509-SVID can be fetched from its socket.
func (e *env) startAgent(path, token string, flags ...string) (*agentProc, error) {
	dir, err := os.MkdirTemp(e.dir, "agent-")
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return nil, err
	}
	a := &agentProc{socket: filepath.Join(dir, "agent.sock")}
	a.cmd = exec.Command(e.agentBin, "--ca-address", e.caAddr, "--ca-bundle", e.roots, "--spiffe-id", spiffeid.RequireFromPath(td, path).String(),
		"--token-file", tokenFile, "--socket", a.socket, "--monitoring-address", "", "--log-level", "warn")
	a.cmd.Args = append(a.cmd.Args, flags...)
	a.cmd.Stderr = os.Stderr
	a.started = time.Now()
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	if err := a.waitFirstSVID(10 * time.Second); err != nil {
		a.stop()
		return nil, fmt.Errorf("palisade-agent served no SVID: %w", err)
	}
	return a, nil
}

// waitFirstSVID polls the agent's socket with go-spiffe's client until it serves an
// X.509-SVID, and notes when: the same for every agent measured.
func (a *agentProc) waitFirstSVID(timeout time.Duration) error {
	err := poll(timeout, time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.socket))
		return err
	})
	a.firstSVID = time.Now()
	return err
}

// fetcher fetches one X.509-SVID; each caller has its own.
type fetcher interface {
	fetch(ctx context.Context) error
	Close() error
}

// spiffeFetcher uses go-spiffe's Workload API client, which also parses and checks
// what it gets (the key, the chain, the bundle), as an application sees it.
type spiffeFetcher struct{ *workloadapi.Client }

func (f spiffeFetcher) fetch(ctx context.Context) error {
	svid, err := f.FetchX509SVID(ctx)
	if err == nil && len(svid.Certificates) == 0 {
		err = errors.New("empty SVID")
	}
	return err
}

// rawFetcher speaks the Workload API with the generated stub and does not parse
// the answer: what the agent itself can serve.
type rawFetcher struct {
	conn *grpc.ClientConn
	api  workload.SpiffeWorkloadAPIClient
}

func (f rawFetcher) Close() error { return f.conn.Close() }

func (f rawFetcher) fetch(ctx context.Context) error {
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"))
	defer cancel()
	stream, err := f.api.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err == nil && len(resp.GetSvids()) == 0 {
		err = errors.New("empty response")
	}
	return err
}

func newFetcher(socket, kind string) (fetcher, error) {
	if kind == "go-spiffe" {
		c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+socket))
		return spiffeFetcher{c}, err
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return rawFetcher{conn: conn, api: workload.NewSpiffeWorkloadAPIClient(conn)}, nil
}

// fetchLoad runs conc Workload API callers of a kind (go-spiffe or raw) fetching
// X.509-SVIDs for d.
func fetchLoad(socket, kind string, conc int, d time.Duration) (float64, []time.Duration, error) {
	callers := make([]func(context.Context) error, conc)
	for i := range callers {
		f, err := newFetcher(socket, kind)
		if err != nil {
			return 0, nil, err
		}
		defer f.Close()
		callers[i] = f.fetch
	}
	return load(callers, d)
}

// load calls each caller once to connect it, then runs all of them in loops for
// d, and returns calls per second and every call's latency.
func load(callers []func(context.Context) error, d time.Duration) (float64, []time.Duration, error) {
	ctx := context.Background()
	for _, call := range callers {
		if err := call(ctx); err != nil {
			return 0, nil, err
		}
	}
	var mu sync.Mutex
	var all []time.Duration
	var errs error
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for _, call := range callers {
		wg.Go(func() {
			var lat []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := call(ctx); err != nil {
					mu.Lock()
					errs = errors.Join(errs, err)
					mu.Unlock()
					return
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if errs != nil {
		return 0, nil, errs
	}
	return float64(len(all)) / time.Since(start).Seconds(), all, nil
}
