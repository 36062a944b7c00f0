// Command kube-bench measures palisaded with Kubernetes as its config source, against
// a real kube-apiserver and etcd (test/kube): a cluster of --services Services, each
// with --pods-per-service Pods behind one EndpointSlice, and --clients proxyless ADS
// clients subscribed to every service.
//
// It reports the informer-to-xDS latency: from an EndpointSlice update (the API
// server's answer to it) to every client having the changed endpoints, median and
// p99 over --changes changes; and palisaded's RSS with the cluster loaded.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/palisade-mesh/palisade/bench/internal/ads"
	"github.com/palisade-mesh/palisade/bench/internal/proc"
	"github.com/palisade-mesh/palisade/test/kube"
	"github.com/palisade-mesh/palisade/xds"
)

func main() {
	services := flag.Int("services", 1000, "Kubernetes Services in namespace default")
	podsPerService := flag.Int("pods-per-service", 5, "Pods (and endpoints) per Service")
	clients := flag.Int("clients", 100, "proxyless ADS clients, each subscribed to every service")
	changes := flag.Int("changes", 100, "EndpointSlice changes to time")
	binary := flag.String("palisaded", "", "palisaded binary (default: build ./cmd/palisaded)")
	cpuProfile := flag.String("cpu-profile", "", "write a CPU profile of palisaded during the first 10 s of changes here")
	extra := flag.String("palisaded-flags", "", "more flags for palisaded, space separated (e.g. \"--memory-limit 250MiB\")")
	flag.Parse()
	if err := run(*services, *podsPerService, *clients, *changes, *binary, *cpuProfile, strings.Fields(*extra)); err != nil {
		fmt.Fprintln(os.Stderr, "kube-bench:", err)
		os.Exit(1)
	}
}

func host(i int) string { return fmt.Sprintf("svc%d.default.svc.cluster.local", i) }

func run(services, podsPerService, clients, changes int, binary, cpuProfile string, extraFlags []string) error {
	dir, err := os.MkdirTemp("", "kube-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if binary == "" {
		if binary, err = proc.Build(dir, "palisaded"); err != nil {
			return err
		}
	}
	cluster, err := kube.StartCluster()
	if err != nil {
		return err
	}
	defer cluster.Stop()
	cfg := rest.CopyConfig(cluster.Config)
	cfg.QPS, cfg.Burst = 2000, 2000 // loading the cluster is not what is measured
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	start := time.Now()
	if err := load(ctx, client, services, podsPerService); err != nil {
		return err
	}
	fmt.Printf("cluster loaded in %v: %d Services, %d Pods, %d EndpointSlices\n", time.Since(start).Round(time.Millisecond), services, services*podsPerService, services)

	start = time.Now()
	p, err := proc.StartPalisaded(binary, dir, dir, append([]string{"--source", "kubernetes", "--kubeconfig", cluster.Kubeconfig, "--namespace", "palisade-system"}, extraFlags...)...)
	if err != nil {
		return err
	}
	defer p.Stop()
	ready := time.Since(start)
	time.Sleep(2 * time.Second) // let the first snapshot's garbage be collected
	loadedRSS, err := proc.Status(p.Cmd.Process.Pid, "VmRSS")
	if err != nil {
		return err
	}
	fmt.Printf("palisaded pid %d ready (first snapshot of the cluster) after %v; RSS %d MB\n", p.Cmd.Process.Pid, ready.Round(time.Millisecond), loadedRSS>>20)

	hosts := make([]string, services)
	for i := range hosts {
		hosts[i] = host(i)
	}
	subs := ads.ForServices("proxyless", hosts)
	watched := xds.ClusterName(9080, "", host(0))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs := make([]*ads.Client, clients)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range cs {
		cs[i] = ads.New(i, "proxyless", resource.EndpointType, watched, subs)
		wg.Go(func() {
			if err := cs[i].Run(cctx, p.XDSAddr); err != nil && cctx.Err() == nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		})
	}
	defer wg.Wait()
	defer cancel()
	for _, c := range cs {
		select {
		case <-c.Ready:
		case err := <-errs:
			return err
		case <-time.After(5 * time.Minute):
			return errors.New("clients did not get their full config within 5 minutes")
		}
	}
	fmt.Printf("%d clients have the full config (%d resources each)\n", clients, cs[0].Resources.Load())

	profiled := make(chan error, 1)
	if cpuProfile != "" {
		go func() { profiled <- proc.Fetch("http://"+p.MonAddr+"/debug/pprof/profile?seconds=10", cpuProfile) }()
	} else {
		profiled <- nil
	}
	slices := client.DiscoveryV1().EndpointSlices("default")
	var latencies []time.Duration
	for n := range changes {
		slice, err := slices.Get(ctx, "svc0", metav1.GetOptions{})
		if err != nil {
			return err
		}
		// Move one endpoint to another address: what a rescheduled pod looks like.
		slice.Endpoints[0].Addresses = []string{fmt.Sprintf("10.200.%d.%d", n/250, n%250+1)}
		for _, c := range cs {
			c.Expect()
		}
		if _, err := slices.Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			return err
		}
		updated := time.Now()
		var last time.Duration
		for _, c := range cs {
			select {
			case at := <-c.Got():
				last = max(last, at.Sub(updated))
			case err := <-errs:
				return err
			case <-time.After(time.Minute):
				return fmt.Errorf("change %d did not reach client %d within a minute", n, c.ID)
			}
		}
		latencies = append(latencies, last)
		if (n+1)%10 == 0 {
			fmt.Printf("%d changes: median %v, p99 %v so far\n", n+1, proc.Median(latencies).Round(time.Millisecond), proc.Percentile(latencies, 0.99).Round(time.Millisecond))
		}
	}
	if err := <-profiled; err != nil {
		return fmt.Errorf("CPU profile: %w", err)
	}
	peak, err := proc.Status(p.Cmd.Process.Pid, "VmHWM")
	if err != nil {
		return err
	}
	rss, err := proc.Status(p.Cmd.Process.Pid, "VmRSS")
	if err != nil {
		return err
	}
	fmt.Printf("\nRESULT services=%d pods=%d clients=%d: EndpointSlice change → all clients median %v, p99 %v (max %v) over %d changes; palisaded RSS %d MB with the cluster loaded, %d MB serving the clients at the end, peak %d MB\n",
		services, services*podsPerService, clients, proc.Median(latencies).Round(time.Millisecond), proc.Percentile(latencies, 0.99).Round(time.Millisecond),
		proc.Percentile(latencies, 1).Round(time.Millisecond), changes, loadedRSS>>20, rss>>20, peak>>20)
	return nil
}

// load creates the Services, Pods and EndpointSlices, a few requests at a time.
func load(ctx context.Context, client kubernetes.Interface, services, podsPerService int) error {
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "palisade-system"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	work := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := loadService(ctx, client, i, podsPerService); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	go func() {
		defer close(work)
		for i := range services {
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func loadService(ctx context.Context, client kubernetes.Interface, i, pods int) error {
	name := fmt.Sprintf("svc%d", i)
	labels := map[string]string{"app": name}
	if _, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "grpc", Port: 9080, TargetPort: intstr.FromInt32(8080)},
		}},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	ready := true
	portName, port := "grpc", int32(8080)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
	}
	for j := range pods {
		pod := fmt.Sprintf("%s-%d", name, j)
		version := []string{"v1", "v2"}[j%2]
		if _, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: pod, Labels: map[string]string{"app": name, "version": version}},
			Spec: corev1.PodSpec{ServiceAccountName: name, NodeName: "node-0",
				Containers: []corev1.Container{{Name: "app", Image: "example/" + name + ":" + version}}},
		}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("pod %s: %w", pod, err)
		}
		n := i*pods + j
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 1+n/65536, n/256%256, n%256)},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: pod},
		})
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("endpointslice %s: %w", name, err)
	}
	return nil
}
