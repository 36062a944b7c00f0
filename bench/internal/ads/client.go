// Package ads is the benchmarks' simulated proxy: a delta ADS client with its own
// connection that subscribes to what a proxyless gRPC app or an Envoy sidecar asks
// for, counts what it receives, and tells when one watched resource changes.
package ads

import (
	"context"
	"fmt"
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

	"github.com/palisade-mesh/palisade/xds"
)

// Subscriptions lists what a client asks for, by type URL; nil means wildcard.
type Subscriptions map[string][]string

// ForServices is what a client of the given kind (proxyless or sidecar) subscribes
// to for services on port 9080 with subsets v1 and v2.
func ForServices(kind string, hosts []string) Subscriptions {
	subs := Subscriptions{}
	var clusters, hostPorts []string
	for _, h := range hosts {
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

// Client is one simulated proxy.
type Client struct {
	ID   int
	Kind string // proxyless or sidecar
	// WatchedType and Watched name the resource whose changes Got reports.
	WatchedType, Watched string
	Subs                 Subscriptions

	Bytes     atomic.Int64 // received, in all responses
	Resources atomic.Int64 // in the first response of each type

	// Ready is closed when every type has arrived once; FullConfigAfter is the time
	// from connecting until then.
	Ready           chan struct{}
	FullConfigAfter time.Duration

	mu  sync.Mutex
	got chan time.Time
}

// New returns a client; start it with Run.
func New(id int, kind, watchedType, watched string, subs Subscriptions) *Client {
	return &Client{ID: id, Kind: kind, WatchedType: watchedType, Watched: watched, Subs: subs, Ready: make(chan struct{})}
}

// Expect arms the client for the next change of the watched resource; Got then
// delivers the time it arrived.
func (c *Client) Expect() {
	c.mu.Lock()
	c.got = make(chan time.Time, 1)
	c.mu.Unlock()
}

// Got delivers the arrival time of the change armed by the latest Expect.
func (c *Client) Got() <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got
}

// Run connects to addr and follows the stream until ctx ends or it fails.
func (c *Client) Run(ctx context.Context, addr string) error {
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
	if c.Kind == "proxyless" {
		md.Fields[xds.MetaGenerator] = structpb.NewStringValue(xds.GeneratorGRPC)
	}
	node := &core.Node{Id: fmt.Sprintf("bench-%d", c.ID), Metadata: md}
	pending := map[string]bool{}
	for _, typeURL := range xds.TypeURLs {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNamesSubscribe: c.Subs[typeURL]}); err != nil {
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
		c.Bytes.Add(int64(proto.Size(resp)))
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
		for _, r := range resp.Resources {
			if r.Name == c.Watched && resp.TypeUrl == c.WatchedType && r.Version != watchedVersion {
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
			c.Resources.Add(int64(len(resp.Resources)))
			delete(pending, resp.TypeUrl) // each type arrives whole in its first response
			if len(pending) == 0 {
				c.FullConfigAfter = time.Since(start)
				close(c.Ready)
			}
		}
	}
}
