package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/test/meshgen"
	"github.com/palisade-mesh/palisade/xds"
	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

// snapshot is a mesh of n services (test/meshgen); svc0 sends weightV2% to v2.
func snapshot(t testing.TB, version uint64, services int, weightV2 int) *mesh.Snapshot {
	t.Helper()
	var b strings.Builder
	for i := range services {
		w := 20
		if i == 0 {
			w = weightV2
		}
		b.WriteString(meshgen.Service(i, w) + "---\n")
	}
	objs, diags := config.Decode("test.yaml", []byte(b.String()))
	if len(diags) > 0 {
		t.Fatalf("test config: %v", diags)
	}
	return mesh.Build(version, objs)
}

func startServer(t testing.TB) (*xdsserver.Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	s := xdsserver.New(xdsserver.Config{Address: "127.0.0.1:0"})
	return s, serve(t, s)
}

func serve(t testing.TB, s *xdsserver.Server) discovery.AggregatedDiscoveryServiceClient {
	t.Helper()
	lis, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discovery.NewAggregatedDiscoveryServiceClient(conn)
}

func node(id string, kind mesh.ProxyKind) *core.Node {
	md := map[string]any{xds.MetaNamespace: "default"}
	if kind == mesh.KindProxyless {
		md[xds.MetaGenerator] = xds.GeneratorGRPC
	}
	s, _ := structpb.NewStruct(md)
	return &core.Node{Id: id, Metadata: s}
}

// openDelta opens a delta ADS stream and returns it with a send that fails the
// test on error.
func openDelta(t *testing.T, client discovery.AggregatedDiscoveryServiceClient) (discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, func(*discovery.DeltaDiscoveryRequest)) {
	t.Helper()
	stream, err := client.DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return stream, func(r *discovery.DeltaDiscoveryRequest) {
		t.Helper()
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
	}
}

func recv[T any](t *testing.T, recv func() (T, error)) T {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() { v, err := recv(); ch <- result{v, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("receiving: %v", r.err)
		}
		return r.v
	case <-time.After(10 * time.Second):
		t.Fatal("no response within 10s")
	}
	panic("unreachable")
}

func names(resp *discovery.DiscoveryResponse) []string {
	var out []string
	for _, a := range resp.Resources {
		var l listener.Listener
		if err := a.UnmarshalTo(&l); err == nil {
			out = append(out, l.Name)
			continue
		}
		out = append(out, a.TypeUrl)
	}
	return out
}

// A proxyless client asking for one listener gets exactly that listener, even though
// its view has many, and a server listener made from the address in its name.
func TestSotwAnswersExactlyTheRequestedNames(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(snapshot(t, 1, 5, 20))
	stream, err := client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"grpc/server?xds.resource.listening_address=127.0.0.1:7777", "svc3.default.svc.cluster.local:9080"}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node("a", mesh.KindProxyless), TypeUrl: resource.ListenerType, ResourceNames: want}); err != nil {
		t.Fatal(err)
	}
	resp := recv(t, stream.Recv)
	if got := names(resp); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("listeners = %v, want %v", got, want)
	}
}

// After a NACK the server holds the rejected version: the next response the client
// sees is the one for the next configuration, not a resend.
func TestSotwHoldsNackedVersionUntilConfigChanges(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(snapshot(t, 1, 2, 20))
	stream, err := client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	req := &discovery.DiscoveryRequest{Node: node("a", mesh.KindProxyless), TypeUrl: resource.RouteType, ResourceNames: []string{"svc0.default.svc.cluster.local:9080"}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	first := recv(t, stream.Recv)
	nack := &discovery.DiscoveryRequest{TypeUrl: resource.RouteType, ResourceNames: req.ResourceNames, ResponseNonce: first.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "rejected for the test"}}
	if err := stream.Send(nack); err != nil {
		t.Fatal(err)
	}
	// A resend would arrive at once; give it the chance before changing the config.
	time.Sleep(200 * time.Millisecond)
	s.SetSnapshot(snapshot(t, 2, 2, 100))
	second := recv(t, stream.Recv)
	if second.VersionInfo == first.VersionInfo {
		t.Fatalf("the NACKed version %s was sent again", first.VersionInfo)
	}
	st := s.Tracker().Status()
	if len(st) != 1 || len(st[0].Types) != 1 || st[0].Types[0].Nacked != first.VersionInfo || st[0].Types[0].NackError != "rejected for the test" {
		t.Fatalf("syncz does not report the NACK: %+v", st)
	}
}

// A change to one route sends only that route over delta xDS, and an ACK gets no
// resend.
func TestDeltaSendsOnlyChangedResources(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(snapshot(t, 1, 50, 20))
	stream, err := client.DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node("envoy", mesh.KindSidecar), TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	full := recv(t, stream.Recv)
	if n := len(full.Resources); n != 50*3+3 {
		t.Fatalf("wildcard CDS has %d clusters, want %d", n, 50*3+3)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: full.Nonce}); err != nil {
		t.Fatal(err)
	}
	routes := meshgen.Host(0) + ":9080" // svc0 has an address: its routes are its own
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResourceNamesSubscribe: []string{routes}}); err != nil {
		t.Fatal(err)
	}
	r1 := recv(t, stream.Recv)
	if r1.TypeUrl != resource.RouteType || len(r1.Resources) != 1 {
		t.Fatalf("expected the route configuration, got %s with %d resources", r1.TypeUrl, len(r1.Resources))
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResponseNonce: r1.Nonce}); err != nil {
		t.Fatal(err)
	}
	// Clusters are unchanged by a weight change; only the route is sent.
	s.SetSnapshot(snapshot(t, 2, 50, 100))
	r2 := recv(t, stream.Recv)
	if r2.TypeUrl != resource.RouteType || len(r2.Resources) != 1 || r2.Resources[0].Version == r1.Resources[0].Version {
		t.Fatalf("after a weight change got %s with %d resources", r2.TypeUrl, len(r2.Resources))
	}
}

// A node without a namespace is refused with a message saying what is missing.
func TestRejectsNodeWithoutNamespace(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(snapshot(t, 1, 1, 20))
	stream, err := client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "x"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if err == nil || !strings.Contains(err.Error(), "NAMESPACE is required") {
		t.Fatalf("got %v, want an error naming the missing NAMESPACE", err)
	}
}

// With one full push allowed in flight, a second proxy's first push waits until the
// first proxy acknowledges its own, and then arrives without a new request.
func TestFullPushesWaitForAcknowledgement(t *testing.T) {
	s := xdsserver.New(xdsserver.Config{Address: "127.0.0.1:0", MaxFullPushes: 1})
	client := serve(t, s)
	s.SetSnapshot(snapshot(t, 1, 3, 20))
	open := func(id string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		stream, err := client.StreamAggregatedResources(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node(id, mesh.KindSidecar), TypeUrl: resource.ClusterType}); err != nil {
			t.Fatal(err)
		}
		return stream
	}
	a := open("a")
	first := recv(t, a.Recv)
	b := open("b")
	got := make(chan *discovery.DiscoveryResponse, 1)
	go func() {
		if r, err := b.Recv(); err == nil {
			got <- r
		}
	}()
	select {
	case <-got:
		t.Fatal("second full push sent while the first was unacknowledged")
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: first.VersionInfo, ResponseNonce: first.Nonce}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if len(r.Resources) != len(first.Resources) {
			t.Fatalf("second proxy got %d clusters, want %d", len(r.Resources), len(first.Resources))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second full push not sent after the first was acknowledged")
	}
}

// Over delta xDS a NACKed resource is not resent either: the next response the client
// sees carries the next configuration.
func TestDeltaHoldsNackedVersionUntilConfigChanges(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(snapshot(t, 1, 2, 20))
	stream, err := client.DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	name := "svc0.default.svc.cluster.local:9080"
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node("a", mesh.KindProxyless), TypeUrl: resource.RouteType, ResourceNamesSubscribe: []string{name}}); err != nil {
		t.Fatal(err)
	}
	first := recv(t, stream.Recv)
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResponseNonce: first.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "rejected for the test"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // a resend would arrive at once
	s.SetSnapshot(snapshot(t, 2, 2, 100))
	second := recv(t, stream.Recv)
	if len(second.Resources) != 1 || second.Resources[0].Version == first.Resources[0].Version {
		t.Fatalf("the NACKed route was sent again instead of the next version")
	}
}

// Delta streams remember only the generation a proxy has; removals, resubscriptions
// and changes that happen between a response and its ACK are still all delivered.
func TestDeltaRemovalsAndResubscriptions(t *testing.T) {
	s, client := startServer(t)
	s.SetSnapshot(snapshot(t, 1, 3, 20))
	stream, send := openDelta(t, client)
	eds := xds.ClusterName(9080, "v1", meshgen.Host(1))
	send(&discovery.DeltaDiscoveryRequest{Node: node("envoy", mesh.KindSidecar), TypeUrl: resource.ClusterType})
	cds := recv(t, stream.Recv)
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: cds.Nonce})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{eds}})
	first := recv(t, stream.Recv)
	if len(first.Resources) != 1 || first.Resources[0].Name != eds {
		t.Fatalf("EDS: got %v", first.Resources)
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: first.Nonce})

	// Unsubscribe, then subscribe again: the assignment is sent again.
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesUnsubscribe: []string{eds}})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{eds}})
	again := recv(t, stream.Recv)
	if again.TypeUrl != resource.EndpointType || len(again.Resources) != 1 || again.Resources[0].Name != eds {
		t.Fatalf("resubscribed EDS: got %s %v", again.TypeUrl, again.Resources)
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: again.Nonce})

	// Service 2 goes away: its three clusters are removed, nothing else is sent.
	s.SetSnapshot(snapshot(t, 2, 2, 20))
	gone := recv(t, stream.Recv)
	if gone.TypeUrl != resource.ClusterType || len(gone.Resources) != 0 || len(gone.RemovedResources) != 3 {
		t.Fatalf("after removing a service: %s, %d resources, removed %v", gone.TypeUrl, len(gone.Resources), gone.RemovedResources)
	}
	for _, name := range gone.RemovedResources {
		if !strings.HasSuffix(name, "|"+meshgen.Host(2)) {
			t.Errorf("removed %s, which still exists", name)
		}
	}
}
