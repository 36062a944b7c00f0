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
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

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
	profile := flag.String("cpu-profile", "", "write a CPU profile of palisaded during the concurrent issuance load here")
	flag.Parse()
	if err := run(*duration, *reps, *starts, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "identity-bench:", err)
		os.Exit(1)
	}
}

type env struct {
	dir, agentBin, caAddr, adminSocket, roots string
}

func run(duration time.Duration, reps, starts int, profile string) error {
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
	monAddr := proc.FreeAddr()
	isolated := proc.IsolatedFlags(dir)
	e := &env{dir: dir, agentBin: agentBin, caAddr: isolated[3], adminSocket: filepath.Join(dir, "data", "admin.sock"), roots: filepath.Join(dir, "data", "root-cert.pem")}
	args := append([]string{"--config-dir", "examples/mesh", "--xds-address", proc.FreeAddr(), "--monitoring-address", monAddr, "--log-level", "warn"}, isolated...)
	cmd := exec.Command(palisaded, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := proc.WaitReady(monAddr, 30*time.Second); err != nil {
		return err
	}
	idleRSS, _ := proc.Status(cmd.Process.Pid, "VmRSS")
	fmt.Printf("machine: %d CPUs (runtime.NumCPU); palisaded pid %d, RSS at start %d MB\n\n", runtime.NumCPU(), cmd.Process.Pid, idleRSS>>20)

	// 1. Issuance through the CA API.
	fmt.Println("SVID issuance (CA API, mTLS renewals, one connection per caller):")
	for _, conc := range []int{1, 32} {
		var rates []float64
		var p50s, p99s []time.Duration
		for rep := range reps {
			var profiled chan error
			if profile != "" && conc > 1 && rep == 0 {
				profiled = make(chan error, 1)
				go func() {
					profiled <- fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", monAddr, int(duration.Seconds())), profile)
				}()
			}
			if profiled != nil && os.Getenv("BENCH_SELF_PROFILE") != "" {
				f, _ := os.Create(os.Getenv("BENCH_SELF_PROFILE"))
				_ = pprof.StartCPUProfile(f)
			}
			rate, lat, err := e.issuance(conc, duration)
			if profiled != nil && os.Getenv("BENCH_SELF_PROFILE") != "" {
				pprof.StopCPUProfile()
			}
			if profiled != nil {
				if err := <-profiled; err != nil {
					return fmt.Errorf("CPU profile: %w", err)
				}
			}
			if err != nil {
				return err
			}
			rates, p50s, p99s = append(rates, rate), append(p50s, proc.Percentile(lat, 0.5)), append(p99s, proc.Percentile(lat, 0.99))
		}
		fmt.Printf("  concurrency %2d: %6.0f issuances/s  p50 %v  p99 %v   (medians of %d)\n", conc, proc.MedianF(rates), proc.Median(p50s), proc.Median(p99s), reps)
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
	token, err := e.token("/ns/bench/sa/fetch")
	if err != nil {
		return err
	}
	a, err := e.startAgent("/ns/bench/sa/fetch", token)
	if err != nil {
		return err
	}
	defer a.stop()
	agentIdle, _ := proc.Status(a.cmd.Process.Pid, "VmRSS")
	fmt.Println("\nWorkload API FetchX509SVID (go-spiffe client, one client per caller):")
	for _, conc := range []int{1, 8} {
		var rates []float64
		var p50s, p99s []time.Duration
		for range reps {
			rate, lat, err := fetchLoad(a.socket, conc, duration)
			if err != nil {
				return err
			}
			rates, p50s, p99s = append(rates, rate), append(p50s, proc.Percentile(lat, 0.5)), append(p99s, proc.Percentile(lat, 0.99))
		}
		fmt.Printf("  concurrency %d: %6.0f fetches/s  p50 %v  p99 %v   (medians of %d)\n", conc, proc.MedianF(rates), proc.Median(p50s), proc.Median(p99s), reps)
	}
	agentRSS, _ := proc.Status(a.cmd.Process.Pid, "VmRSS")
	agentHWM, _ := proc.Status(a.cmd.Process.Pid, "VmHWM")
	fmt.Printf("\nRSS: palisaded %d MB at start, %d MB after the issuance load (peak %d MB); agent %d MB idle, %d MB after the fetch load (peak %d MB)\n",
		idleRSS>>20, caRSS>>20, caHWM>>20, agentIdle>>20, agentRSS>>20, agentHWM>>20)
	return nil
}

// fetch saves the body of a GET.
func fetch(url, file string) error {
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

// token creates a bootstrap token through palisaded's admin socket.
func (e *env) token(path string) (string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", e.adminSocket)
	}}}
	body, _ := json.Marshal(caserver.CreateTokenRequest{SPIFFEID: spiffeid.RequireFromPath(td, path).String(), TTL: "10m"})
	resp, err := client.Post("http://palisaded/v1/identity/tokens", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out caserver.CreateTokenResponse
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("token: status %d", resp.StatusCode)
	}
	return out.Token, json.NewDecoder(resp.Body).Decode(&out)
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
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range conc {
		conn, err := grpc.NewClient(e.caAddr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
		if err != nil {
			return 0, nil, err
		}
		defer conn.Close()
		api := identitypb.NewCertificateAuthorityClient(conn)
		if _, err := api.SignX509SVID(context.Background(), &identitypb.SignX509SVIDRequest{Csr: csrs[0]}); err != nil { // warm up the connection
			return 0, nil, err
		}
		wg.Go(func() {
			var lat []time.Duration
			for i := w; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				_, err := api.SignX509SVID(context.Background(), &identitypb.SignX509SVIDRequest{Csr: csrs[i%len(csrs)]})
				if err != nil {
					mu.Lock()
					firstErr = errors.Join(firstErr, err)
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
	if firstErr != nil {
		return 0, nil, firstErr
	}
	return float64(len(all)) / time.Since(start).Seconds(), all, nil
}

type agentProc struct {
	cmd                *exec.Cmd
	socket             string
	started, firstSVID time.Time
}

func (a *agentProc) stop() { _ = a.cmd.Process.Kill(); _ = a.cmd.Wait() }

// startAgent starts palisade-agent for an identity and returns once an
// X.509-SVID can be fetched from its socket.
func (e *env) startAgent(path, token string) (*agentProc, error) {
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
	a.cmd.Stderr = os.Stderr
	a.started = time.Now()
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := a.started.Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.socket))
		cancel()
		if err == nil {
			a.firstSVID = time.Now()
			return a, nil
		}
		time.Sleep(time.Millisecond)
	}
	a.stop()
	return nil, errors.New("agent served no SVID within 10s")
}

// fetchLoad runs conc Workload API clients fetching X.509-SVIDs for d.
func fetchLoad(socket string, conc int, d time.Duration) (float64, []time.Duration, error) {
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range conc {
		client, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+socket))
		if err != nil {
			return 0, nil, err
		}
		defer client.Close()
		if _, err := client.FetchX509SVID(context.Background()); err != nil {
			return 0, nil, err
		}
		wg.Go(func() {
			var lat []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				svid, err := client.FetchX509SVID(context.Background())
				if err == nil && len(svid.Certificates) == 0 {
					err = errors.New("empty SVID")
				}
				if err != nil {
					mu.Lock()
					firstErr = errors.Join(firstErr, err)
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
	if firstErr != nil {
		return 0, nil, firstErr
	}
	return float64(len(all)) / time.Since(start).Seconds(), all, nil
}
