package backend

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/xds"
)

// Dial opens a proxyless gRPC client connection to target (e.g.
// "xds:///reviews.default.svc.cluster.local:9080"). The bootstrap JSON (see
// xds.GRPCBootstrap in Palisade's xds package) is used by this connection only, so
// several clients with different node identities can live in one process. If bootstrap
// is empty, grpc-go's global bootstrap (GRPC_XDS_BOOTSTRAP...) is used. Security comes
// from xDS, with plaintext as the fallback.
func Dial(target string, bootstrap []byte) (*grpc.ClientConn, error) {
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return nil, fmt.Errorf("xds client credentials: %w", err)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if len(bootstrap) > 0 {
		rb, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
		if err != nil {
			return nil, fmt.Errorf("xds resolver: %w", err)
		}
		opts = append(opts, grpc.WithResolvers(rb))
	}
	return grpc.NewClient(target, opts...)
}

// Call makes one UnaryCall on conn with the given request headers and returns the
// version of the backend that answered.
func Call(ctx context.Context, conn grpc.ClientConnInterface, headers map[string]string) (string, error) {
	if len(headers) > 0 {
		kv := make([]string, 0, 2*len(headers))
		for k, v := range headers {
			kv = append(kv, k, v)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	}
	resp, err := testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{FillServerId: true})
	if err != nil {
		return "", err
	}
	return resp.GetServerId(), nil
}

// Tally counts which version answered each call; failed calls count under Errors.
type Tally struct {
	Versions map[string]int
	Errors   int
	LastErr  error
}

// Add records the outcome of one call.
func (t *Tally) Add(version string, err error) {
	if err != nil {
		t.Errors++
		t.LastErr = err
		return
	}
	if t.Versions == nil {
		t.Versions = map[string]int{}
	}
	t.Versions[version]++
}

// Total is the number of calls recorded.
func (t *Tally) Total() int {
	n := t.Errors
	for _, c := range t.Versions {
		n += c
	}
	return n
}

// String prints the tally as "v1=800 v2=200 errors=0".
func (t *Tally) String() string {
	var b strings.Builder
	for _, v := range slices.Sorted(maps.Keys(t.Versions)) {
		fmt.Fprintf(&b, "%s=%d ", v, t.Versions[v])
	}
	fmt.Fprintf(&b, "errors=%d", t.Errors)
	if t.LastErr != nil {
		fmt.Fprintf(&b, " (last error: %v)", t.LastErr)
	}
	return b.String()
}

// CallN makes n calls, one after the other, and tallies the versions that answered.
// It stops early only if ctx is done.
func CallN(ctx context.Context, conn grpc.ClientConnInterface, n int, headers map[string]string) *Tally {
	t := &Tally{}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		v, err := Call(ctx, conn, headers)
		t.Add(v, err)
	}
	return t
}
