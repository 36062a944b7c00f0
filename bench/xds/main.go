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
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/palisade-mesh/palisade/bench/internal/proc"
	"github.com/palisade-mesh/palisade/test/meshgen"
	"github.com/palisade-mesh/palisade/xds"
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

	subs := subscriptions(kind, services)
	changed := meshgen.Host(0) + ":9080" // the route configuration svc0's routes are in

	// One proxy alone first: connect → full config with nothing else going on.
	var alone []time.Duration
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		c := &client{id: -1, kind: kind, watched: changed, subs: subs, ready: make(chan struct{})}
		errc := make(chan error, 1)
		go func() { errc <- c.run(ctx, xdsAddr) }()
		select {
		case <-c.ready:
			alone = append(alone, c.fullConfigAfter)
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
	cs := make([]*client, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range cs {
		cs[i] = &client{id: i, kind: kind, watched: changed, subs: subs, ready: make(chan struct{})}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cs[i].run(ctx, xdsAddr); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	for _, c := range cs {
		select {
		case <-c.ready:
		case err := <-errs:
			return err
		case <-time.After(5 * time.Minute):
			return errors.New("clients did not get their full config within 5 minutes")
		}
	}
	var connect []time.Duration
	var fullBytes []float64
	for _, c := range cs {
		connect = append(connect, c.fullConfigAfter)
		fullBytes = append(fullBytes, float64(c.bytes.Load()))
	}
	fmt.Printf("connect → full config: median %v, p99 %v; full push %.0f bytes per client (%d resources)\n",
		proc.Median(connect), proc.Percentile(connect, 0.99), proc.MedianF(fullBytes), cs[0].resources.Load())

	var latencies, medians []time.Duration
	var ratios []float64
	for n := range changes {
		weightV2 := []int{50, 100, 0, 30, 70}[n%5]
		before := make([]int64, len(cs))
		for i, c := range cs {
			before[i] = c.bytes.Load()
			c.expect()
		}
		start := time.Now()
		if err := os.WriteFile(filepath.Join(configDir, "svc0.yaml"), []byte(meshgen.Service(0, weightV2)), 0o644); err != nil {
			return err
		}
		var per []time.Duration
		for _, c := range cs {
			select {
			case at := <-c.got:
				per = append(per, at.Sub(start))
			case err := <-errs:
				return err
			case <-time.After(time.Minute):
				return fmt.Errorf("change %d did not reach client %d within a minute", n, c.id)
			}
		}
		time.Sleep(200 * time.Millisecond) // let anything else the change caused arrive, to count its bytes
		var sent []float64
		for i, c := range cs {
			sent = append(sent, float64(c.bytes.Load()-before[i]))
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

// subscriptions lists what each client asks for, by type; nil means wildcard.
func subscriptions(kind string, services int) map[string][]string {
	subs := map[string][]string{}
	var clusters, hostPorts []string
	for i := range services {
		h := meshgen.Host(i)
		for _, subset := range []string{"", "v1", "v2"} {
			clusters = append(clusters, xds.ClusterName(9080, subset, h))
		}
		hostPorts = append(hostPorts, h+":9080")
	}
	subs[resource.EndpointType] = clusters
	if kind == "sidecar" {
		// Wildcard CDS and LDS; the route configurations the listener names: one per
		// service (each has an address) and the port's, for Host-routed traffic.
		subs[resource.ClusterType] = nil
		subs[resource.ListenerType] = nil
		subs[resource.RouteType] = append(hostPorts, "9080")
	} else {
		subs[resource.ClusterType] = clusters
		subs[resource.ListenerType] = hostPorts
		subs[resource.RouteType] = hostPorts
	}
	return subs
}

type client struct {
	id      int
	kind    string
	watched string // the route resource a change shows up in
	subs    map[string][]string

	bytes     atomic.Int64
	resources atomic.Int64

	ready           chan struct{}
	fullConfigAfter time.Duration

	mu  sync.Mutex
	got chan time.Time
}

func (c *client) expect() {
	c.mu.Lock()
	c.got = make(chan time.Time, 1)
	c.mu.Unlock()
}

func (c *client) run(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return err
	}
	defer conn.Close()
	start := time.Now()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	md, _ := structpb.NewStruct(map[string]any{xds.MetaNamespace: "default"})
	if c.kind == "proxyless" {
		md.Fields[xds.MetaGenerator] = structpb.NewStringValue(xds.GeneratorGRPC)
	}
	node := &core.Node{Id: fmt.Sprintf("bench-%d", c.id), Metadata: md}
	pending := map[string]bool{}
	for _, typeURL := range xds.TypeURLs {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNamesSubscribe: c.subs[typeURL]}); err != nil {
			return err
		}
		pending[typeURL] = true
	}
	var watchedVersion string
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		c.bytes.Add(int64(proto.Size(resp)))
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
		for _, r := range resp.Resources {
			if r.Name == c.watched && resp.TypeUrl == resource.RouteType && r.Version != watchedVersion {
				if watchedVersion != "" {
					c.mu.Lock()
					select {
					case c.got <- time.Now():
					default:
					}
					c.mu.Unlock()
				}
				watchedVersion = r.Version
			}
		}
		if len(pending) > 0 {
			c.resources.Add(int64(len(resp.Resources)))
			delete(pending, resp.TypeUrl) // each type arrives whole in its first response
			if len(pending) == 0 {
				c.fullConfigAfter = time.Since(start)
				close(c.ready)
			}
		}
	}
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
