package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// The floor: a Workload API server that does nothing but send one canned answer
// (an X509SVIDResponse fetched once from Palisade's agent), run as a process of
// its own like the agents. It is what gRPC itself costs, with the same clients.

// floorEnv, set to a socket path, makes this program the floor server.
const floorEnv = "IDENTITY_BENCH_FLOOR_SOCKET"

type floorServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.X509SVIDResponse
}

func (f *floorServer) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	if err := stream.Send(f.resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// serveFloor runs the floor server: it copies the answer of the agent at
// IDENTITY_BENCH_FLOOR_FROM, then serves it until killed.
func serveFloor(socket string) error {
	conn, err := grpc.NewClient("unix://"+os.Getenv("IDENTITY_BENCH_FLOOR_FROM"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true"), 10*time.Second)
	defer cancel()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	conn.Close()
	l, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(g, &floorServer{resp: resp})
	return g.Serve(l)
}

// startFloor starts the floor server as a child process, serving what the agent
// at from serves.
func startFloor(dir, from string) (*exec.Cmd, string, error) {
	socket := filepath.Join(dir, "floor.sock")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floorEnv+"="+socket, "IDENTITY_BENCH_FLOOR_FROM="+from)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f, err := newFetcher(socket, "raw")
		if err == nil {
			err = f.fetch(context.Background())
			f.Close()
			if err == nil {
				return cmd, socket, nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return nil, "", errors.New("the floor server did not start")
}

func init() {
	if socket := os.Getenv(floorEnv); socket != "" {
		if err := serveFloor(socket); err != nil {
			fmt.Fprintln(os.Stderr, "identity-bench floor server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}
