// Command backend is the demo's gRPC backend: it serves grpc.testing.TestService on
// --address and answers every UnaryCall with its --version, so that the demo client
// can print which version of a service answered.
//
//	go run ./examples/demo/backend --address 127.0.0.1:9083 --version v1
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/palisade-mesh/palisade/test/backend"
)

func main() {
	addr := flag.String("address", "127.0.0.1:9083", "address to listen on (the one its WorkloadEntry in examples/mesh names)")
	version := flag.String("version", "v1", "version to answer with")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "backend: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := backend.Start(ctx, backend.Config{Address: *addr, Version: *version})
	if err != nil {
		log.Fatalf("backend: %v", err)
	}
	log.Printf("backend %s serving on %s", *version, b.Addr())
	<-b.Done()
	if err := b.Stop(); err != nil {
		log.Fatalf("backend %s: %v", *version, err)
	}
}
