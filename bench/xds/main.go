// Command xds-bench measures palisaded as its users see it: a real palisaded process
// serving a mesh from a config directory to many ADS clients (simulated in this
// process, each with its own connection and delta xDS stream), then a one-line edit
// of one VirtualService file.
//
// It reports the time from connect to full config, the time from the file write to
// every client having the change, the bytes each client received for the change
// against a full push, and palisaded's peak RSS. Medians over --changes edits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/palisade-mesh/palisade/bench/internal/ads"
	"github.com/palisade-mesh/palisade/bench/internal/proc"
	"github.com/palisade-mesh/palisade/test/meshgen"
)

func main() {
	services := flag.Int("services", 1000, "services in the mesh, each with a VirtualService and a DestinationRule")
	clients := flag.Int("clients", 500, "concurrent ADS clients")
	kind := flag.String("kind", "proxyless", "client kind: proxyless (subscribes every service by name) or sidecar (wildcard CDS/LDS, EDS and RDS by name)")
	changes := flag.Int("changes", 5, "VirtualService edits to time")
	palisaded := flag.String("palisaded", "", "palisaded binary (default: build ./cmd/palisaded)")
	heapProfile := flag.String("heap-profile", "", "write palisaded's heap profile here at the end")
	extra := flag.String("palisaded-flags", "", "more flags for palisaded, space separated (e.g. \"--memory-limit 250MiB\")")
	flag.Parse()
	if err := run(*services, *clients, *kind, *changes, *palisaded, *heapProfile, strings.Fields(*extra)); err != nil {
		fmt.Fprintln(os.Stderr, "xds-bench:", err)
		os.Exit(1)
	}
}

func run(services, clients int, kind string, changes int, binary, heapProfile string, extraFlags []string) error {
	if kind != "proxyless" && kind != "sidecar" {
		return fmt.Errorf("--kind %q: use proxyless or sidecar", kind)
	}
	dir, err := os.MkdirTemp("", "xds-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if binary == "" {
		if binary, err = proc.Build(dir, "palisaded"); err != nil {
			return err
		}
	}
	configDir := filepath.Join(dir, "config")
	if err := os.Mkdir(configDir, 0o755); err != nil {
		return err
	}
	for i := range services {
		if err := os.WriteFile(filepath.Join(configDir, fmt.Sprintf("svc%d.yaml", i)), []byte(meshgen.Service(i, 20)), 0o644); err != nil {
			return err
		}
	}
	p, err := proc.StartPalisaded(binary, dir, configDir, extraFlags...)
	if err != nil {
		return err
	}
	defer p.Stop()
	cmd, xdsAddr, monAddr := p.Cmd, p.XDSAddr, p.MonAddr
	fmt.Printf("palisaded pid %d (%s) serving %d services; %d %s delta ADS clients\n", cmd.Process.Pid, strings.Join(extraFlags, " "), services, clients, kind)

	hosts := make([]string, services)
	for i := range hosts {
		hosts[i] = meshgen.Host(i)
	}
	subs := ads.ForServices(kind, hosts)
	changed := meshgen.Host(0) + ":9080" // the route configuration svc0's routes are in

	// One proxy alone first: connect → full config with nothing else going on.
	var alone []time.Duration
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		c := ads.New(-1, kind, resource.RouteType, changed, subs)
		errc := make(chan error, 1)
		go func() { errc <- c.Run(ctx, xdsAddr) }()
		select {
		case <-c.Ready:
			alone = append(alone, c.FullConfigAfter)
		case err := <-errc:
			cancel()
			return fmt.Errorf("single client: %w", err)
		}
		cancel()
		<-errc
	}
	fmt.Printf("one client alone, connect → full config: median of 5 %v\n", proc.Median(alone).Round(time.Millisecond))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := make([]*ads.Client, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range cs {
		cs[i] = ads.New(i, kind, resource.RouteType, changed, subs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cs[i].Run(ctx, xdsAddr); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	for _, c := range cs {
		select {
		case <-c.Ready:
		case err := <-errs:
			return err
		case <-time.After(5 * time.Minute):
			return errors.New("clients did not get their full config within 5 minutes")
		}
	}
	var connect []time.Duration
	var fullBytes []float64
	for _, c := range cs {
		connect = append(connect, c.FullConfigAfter)
		fullBytes = append(fullBytes, float64(c.Bytes.Load()))
	}
	fmt.Printf("connect → full config: median %v, p99 %v; full push %.0f bytes per client (%d resources)\n",
		proc.Median(connect), proc.Percentile(connect, 0.99), proc.MedianF(fullBytes), cs[0].Resources.Load())

	var latencies, medians []time.Duration
	var ratios []float64
	for n := range changes {
		weightV2 := []int{50, 100, 0, 30, 70}[n%5]
		before := make([]int64, len(cs))
		for i, c := range cs {
			before[i] = c.Bytes.Load()
			c.Expect()
		}
		start := time.Now()
		if err := os.WriteFile(filepath.Join(configDir, "svc0.yaml"), []byte(meshgen.Service(0, weightV2)), 0o644); err != nil {
			return err
		}
		var per []time.Duration
		for _, c := range cs {
			select {
			case at := <-c.Got():
				per = append(per, at.Sub(start))
			case err := <-errs:
				return err
			case <-time.After(time.Minute):
				return fmt.Errorf("change %d did not reach client %d within a minute", n, c.ID)
			}
		}
		time.Sleep(200 * time.Millisecond) // let anything else the change caused arrive, to count its bytes
		var sent []float64
		for i, c := range cs {
			sent = append(sent, float64(c.Bytes.Load()-before[i]))
		}
		all := slices.Max(per)
		latencies = append(latencies, all)
		medians = append(medians, proc.Median(per))
		ratios = append(ratios, proc.MedianF(sent)/proc.MedianF(fullBytes))
		fmt.Printf("change %d: all %d clients updated after %v (median client %v); %.0f bytes per client = %.4f%% of a full push\n",
			n+1, len(cs), all.Round(time.Millisecond), proc.Median(per).Round(time.Millisecond), proc.MedianF(sent), 100*ratios[n])
	}
	rss, err := proc.Status(cmd.Process.Pid, "VmHWM")
	if err != nil {
		return err
	}
	current, err := proc.Status(cmd.Process.Pid, "VmRSS")
	if err != nil {
		return err
	}
	if mem, err := memStats(monAddr); err == nil {
		fmt.Println("palisaded memory at the end:", mem)
	}
	if heapProfile != "" {
		if err := proc.Fetch("http://"+monAddr+"/debug/pprof/heap", heapProfile); err != nil {
			return err
		}
	}
	fmt.Printf("\nRESULT services=%d clients=%d kind=%s: change→all clients median %v (p50 per client %v); change bytes %.4f%% of full push; connect→full config alone %v, all %d at once p50 %v p99 %v; palisaded peak RSS %d MB (%d MB at the end)\n",
		services, clients, kind, proc.Median(latencies).Round(time.Millisecond), proc.Median(medians).Round(time.Millisecond), 100*proc.MedianF(ratios),
		proc.Median(alone).Round(time.Millisecond), clients, proc.Median(connect).Round(time.Millisecond), proc.Percentile(connect, 0.99).Round(time.Millisecond), rss>>20, current>>20)
	cancel()
	wg.Wait()
	return nil
}

// memStats picks the Go runtime's memory figures from palisaded's /metrics.
func memStats(addr string) (string, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		for _, name := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_stack_inuse_bytes", "go_goroutines"} {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				if strings.HasSuffix(name, "_bytes") {
					out = append(out, fmt.Sprintf("%s=%.0fMB", strings.TrimSuffix(strings.TrimPrefix(name, "go_memstats_"), "_bytes"), f/(1<<20)))
				} else {
					out = append(out, fmt.Sprintf("%s=%.0f", strings.TrimPrefix(name, "go_"), f))
				}
			}
		}
	}
	return strings.Join(out, " "), nil
}
