package e2e

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/palisade-mesh/palisade/test/backend"
	"github.com/palisade-mesh/palisade/xds"
)

// A grpc-go xDS server (xds.NewGRPCServer) on 127.0.0.1:PORT asks palisaded for the
// listener grpc/server?xds.resource.listening_address=127.0.0.1:PORT, goes SERVING
// once it has it, and serves calls from a proxyless client.
func TestXDSServer(t *testing.T) {
	t.Parallel()
	// Listen first, so the WorkloadEntry can name the port the server will use.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	writeFile(t, dir, "ratings.yaml", fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings
  namespace: default
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: grpc, protocol: GRPC}
  resolution: STATIC
  workloadSelector:
    labels: {app: ratings}
---
%s`, workloadEntry("ratings-v1", "ratings", "v1", port)))
	d := startPalisaded(t, dir)

	var mu sync.Mutex
	var modes []string
	serverNode := "e2e-ratings-v1~server"
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := backend.StartXDS(ctx, backend.XDSConfig{
		Config:    backend.Config{Listener: lis, Version: "xds-v1"},
		Bootstrap: bootstrap(t, d, serverNode, map[string]string{"app": "ratings", "version": "v1"}),
		OnModeChange: func(mode connectivity.ServingMode, err error) {
			mu.Lock()
			defer mu.Unlock()
			modes = append(modes, fmt.Sprintf("%v (%v)", mode, err))
		},
	})
	if err != nil {
		cancel()
		lis.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := srv.Stop(); err != nil {
			t.Errorf("xds server: %v", err)
		}
	})

	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := srv.WaitServing(wctx); err != nil {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("xDS server never got its listener %q: %v\nmode changes: %v\nconfig_dump:\n%s",
			fmt.Sprintf(xds.ServerListenerTemplate, srv.Addr()), err, modes, d.ConfigDump(serverNode))
	}
	mu.Lock()
	t.Logf("xDS server modes: %v", modes)
	mu.Unlock()

	c := newClient(t, d, "xds:///ratings.default.svc.cluster.local:9080")
	tally := c.calls(50, nil)
	if tally.Errors != 0 || tally.Versions["xds-v1"] != 50 {
		t.Fatalf("want 50 calls answered by the xDS server, have %s\nclient config_dump:\n%s", tally, d.ConfigDump(c.NodeID))
	}
	if mode, err := srv.Mode(); mode != connectivity.ServingModeServing {
		t.Fatalf("xDS server left serving mode: %v (%v)", mode, err)
	}
}
