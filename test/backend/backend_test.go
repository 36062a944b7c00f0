package backend

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

func TestPlainBackendAnswersWithVersion(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := Start(ctx, Config{Address: "127.0.0.1:0", Version: "v7"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+b.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	tally := CallN(cctx, conn, 5, map[string]string{"end-user": "jason"})
	if tally.Errors != 0 || tally.Versions["v7"] != 5 || tally.Total() != 5 {
		t.Fatalf("want 5 answers from v7, have %s", tally)
	}
	if got, want := tally.String(), "v7=5 errors=0"; got != want {
		t.Errorf("Tally.String() = %q, want %q", got, want)
	}
	if mode, _ := b.Mode(); mode != connectivity.ServingModeServing {
		t.Errorf("plain backend mode = %v, want serving", mode)
	}

	cancel() // stopping the context stops the server
	select {
	case <-b.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("backend did not stop when its context was cancelled")
	}
	if err := b.Stop(); err != nil {
		t.Errorf("Stop after cancel: %v", err)
	}
}

func TestStartFailsOnBusyAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if _, err := Start(context.Background(), Config{Address: lis.Addr().String(), Version: "v1"}); err == nil {
		t.Fatal("Start on a busy address succeeded")
	}
}

// Without a management server, an xDS backend never gets its listener: WaitServing
// must time out and say which mode it was stuck in.
func TestXDSBackendWaitsForListener(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens here any more

	bootstrap := `{
	  "xds_servers": [{"server_uri": "` + deadAddr + `", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
	  "node": {"id": "backend-test"},
	  "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s"
	}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := StartXDS(ctx, XDSConfig{Config: Config{Version: "x1"}, Bootstrap: []byte(bootstrap)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	err = b.WaitServing(wctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "x1") {
		t.Fatalf("WaitServing without a management server: %v, want a deadline error naming the backend", err)
	}
}
