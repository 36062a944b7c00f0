// Command client is the demo's proxyless gRPC client. It asks palisaded (over xDS) how
// to reach --target, calls it in a loop and prints which version answered each call,
// with a running tally:
//
//	go run ./examples/demo/client --xds-address 127.0.0.1:15010
//	go run ./examples/demo/client --header end-user=jason
//
// The client identifies itself to palisaded with a gRPC xDS bootstrap (node ID and
// metadata: namespace default, proxyless generator) built in-process, the same JSON
// that `palisadectl bootstrap` writes for GRPC_XDS_BOOTSTRAP.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-mesh/palisade/test/backend"
	"github.com/palisade-mesh/palisade/xds"
)

type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }

func (h headerFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return errors.New("want NAME=VALUE")
	}
	h[strings.ToLower(k)] = v
	return nil
}

func main() {
	xdsAddr := flag.String("xds-address", "127.0.0.1:15010", "palisaded's xDS address")
	target := flag.String("target", "xds:///reviews.default.svc.cluster.local:9080", "gRPC target to call")
	interval := flag.Duration("interval", 500*time.Millisecond, "time between calls")
	count := flag.Int("count", 0, "number of calls to make (0: until interrupted)")
	nodeID := flag.String("node-id", "", "xDS node ID (default: demo-client-<pid>)")
	namespace := flag.String("namespace", "default", "namespace the client runs in")
	headers := headerFlags{}
	flag.Var(headers, "header", "request header NAME=VALUE to send (repeatable), e.g. end-user=jason")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "client: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if *nodeID == "" {
		*nodeID = fmt.Sprintf("demo-client-%d", os.Getpid())
	}

	bootstrap, err := xds.GRPCBootstrap(xds.BootstrapOptions{
		NodeID:     *nodeID,
		XDSAddress: *xdsAddr,
		Namespace:  *namespace,
		Labels:     map[string]string{"app": "demo-client"},
	})
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	conn, err := backend.Dial(*target, bootstrap)
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	defer conn.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Printf("node %s calling %s via palisaded at %s (headers %v)", *nodeID, *target, *xdsAddr, headers)

	tally := &backend.Tally{}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for i := 1; *count == 0 || i <= *count; i++ {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		version, err := backend.Call(callCtx, conn, headers)
		cancel()
		if ctx.Err() != nil {
			break
		}
		tally.Add(version, err)
		if err != nil {
			fmt.Printf("call %4d: error: %v\n", i, err)
		} else {
			fmt.Printf("call %4d: %-3s answered   tally: %s\n", i, version, shortTally(tally))
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Printf("total: %s\n", tally)
}

// shortTally is the tally without the last error, for one line per call.
func shortTally(t *backend.Tally) string {
	c := *t
	c.LastErr = nil
	return c.String()
}
