package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/palisade-mesh/palisade/identity/wellknown"
)

func TestNewServerConfig(t *testing.T) {
	for name, cfg := range map[string]ServerConfig{
		"no socket":   {Store: NewStore(), Attestor: AllowAll(idA)},
		"no store":    {SocketPath: "/x", Attestor: AllowAll(idA)},
		"no attestor": {SocketPath: "/x", Store: NewStore()},
		"bad mode":    {SocketPath: "/x", Store: NewStore(), Attestor: AllowAll(idA), SocketMode: os.ModeSetuid | 0o600},
	} {
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Two servers may share a registry (metrics are shared, not re-registered).
	h := startHarness(t)
	if _, err := NewServer(ServerConfig{SocketPath: "/x", Store: NewStore(), Attestor: AllowAll(idA), Registerer: h.reg}); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(context.Background()); err == nil {
		t.Fatal("second Serve accepted")
	}
}

func serveAt(t *testing.T, path string) (context.CancelFunc, chan error) {
	t.Helper()
	srv, err := NewServer(ServerConfig{SocketPath: path, Store: NewStore(), Attestor: AllowAll(idA)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(cancel)
	return cancel, done
}

func TestServeSocketFile(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "agent.sock")

	// A stale socket from a crashed agent is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	cancel, done := serveAt(t, path)
	waitForSocket(t, path, done)

	// A second agent on the same path refuses to steal a live socket.
	_, done2 := serveAt(t, path)
	select {
	case err := <-done2:
		if err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("second agent: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second agent did not fail")
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	// No temporary bind directories are left either.
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left in socket dir: %v", entries)
	}

	// Anything that is not a socket is never removed.
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, done3 := serveAt(t, path)
	if err := <-done3; err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at socket path: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Fatal("regular file was touched")
	}
}

// Serve returns promptly with watch streams open, and tells them Unavailable
// so clients reconnect (a bare GracefulStop would wait for them forever).
func TestServeStopsWithOpenStreams(t *testing.T) {
	h := startHarness(t)
	ctx := testCtx(t)
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h.path))
	stream, err := raw.FetchX509SVID(withHeader(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	sds, err := secretservice.NewSecretDiscoveryServiceClient(rawConn(t, h.path)).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sds.Send(&discovery.DiscoveryRequest{Node: testNode, ResourceNames: []string{wellknown.SecretCertificate}}); err != nil {
		t.Fatal(err)
	}
	if _, err := sds.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	h.stop()
	if d := time.Since(start); d > gracePeriod/2 {
		t.Fatalf("Serve took %v to stop", d)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("open stream got %v, want Unavailable", err)
	}
	if _, err := recvTimeout(sds.Recv); err == nil {
		t.Fatal("SDS stream still open")
	}
}

// Reflection lists both services, as the Workload Endpoint spec recommends.
func TestReflection(t *testing.T) {
	h := startHarness(t)
	ctx := testCtx(t)
	stream, err := reflectionpb.NewServerReflectionClient(rawConn(t, h.path)).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		got[s.GetName()] = true
	}
	if !got["SpiffeWorkloadAPI"] || !got["envoy.service.secret.v3.SecretDiscoveryService"] {
		t.Fatalf("services: %v", got)
	}
}
