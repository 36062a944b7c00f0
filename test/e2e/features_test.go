package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/palisade-mesh/palisade/test/backend"
)

// reviewsRule is a VirtualService for reviews with the given HTTP routes (YAML list
// items, indented for spec.http), after the DestinationRule with subsets v1 and v2.
func reviewsRule(httpRoutes string) string {
	return destinationRuleYAML + `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
` + httpRoutes
}

// URI matches (exact, prefix, regex) on the gRPC method path choose the destination;
// a route whose URI does not match the call is skipped.
func TestURIMatches(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 100, 0)
	c := newClient(t, m.daemon, reviewsTarget)
	c.waitAll("v1", nil, 10*time.Second)
	const method = "/grpc.testing.TestService/UnaryCall"
	for _, tc := range []struct {
		name, match, want string
	}{
		{"exact", fmt.Sprintf(`{uri: {exact: %q}}`, method), "v2"},
		{"prefix", `{uri: {prefix: "/grpc.testing.TestService/"}}`, "v2"},
		{"regex", `{uri: {regex: "/grpc[.]testing[.]TestService/Unary.*"}}`, "v2"},
		{"exact, another method", `{uri: {exact: "/grpc.testing.TestService/EmptyCall"}}`, "v1"},
		{"prefix, another service", `{uri: {prefix: "/grpc.health.v1.Health/"}}`, "v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Start from everything going to the other version, so that the case's
			// answer can only come from its own rule.
			other := map[string]string{"v1": "v2", "v2": "v1"}[tc.want]
			m.writeConfigFile(t, "reviews-routing.yaml", reviewsRule(fmt.Sprintf(`  - route: [{destination: {host: reviews, subset: %s}}]
`, other)))
			c.waitAll(other, nil, 10*time.Second)
			m.writeConfigFile(t, "reviews-routing.yaml", reviewsRule(fmt.Sprintf(`  - match: [%s]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
`, tc.match)))
			c.waitAll(tc.want, nil, 10*time.Second)
			if tally := c.calls(50, nil); tally.Versions[tc.want] != 50 {
				t.Fatalf("match %s: want 50 calls answered by %s, have %s", tc.match, tc.want, tally)
			}
		})
	}
}

// A VirtualService timeout bounds the call: a slow backend makes it fail with
// DEADLINE_EXCEEDED after about the timeout, and a fast one still answers.
func TestTimeout(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 100, 0)
	c := newClient(t, m.daemon, reviewsTarget)
	m.writeConfigFile(t, "reviews-routing.yaml", reviewsRule(`  - route: [{destination: {host: reviews, subset: v2}}]
    timeout: 300ms
`))
	c.waitAll("v2", nil, 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := backend.Call(ctx, c.conn, map[string]string{backend.DelayHeader: "5s"})
	took := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call to a backend that takes 5s: got %v, want DEADLINE_EXCEEDED from the 300ms route timeout", err)
	}
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("the call failed after %v; the route timeout is 300ms", took)
	}
	if v, err := backend.Call(ctx, c.conn, map[string]string{backend.DelayHeader: "20ms"}); err != nil || v != "v2" {
		t.Fatalf("a fast call: %q, %v", v, err)
	}
}

// VirtualService retries make a call succeed when its first attempts fail with
// UNAVAILABLE; without them the same call fails.
func TestRetries(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 100, 0)
	c := newClient(t, m.daemon, reviewsTarget)
	flaky := func(id string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return backend.Call(ctx, c.conn, map[string]string{backend.FailHeader: "2", backend.CallIDHeader: t.Name() + id})
	}

	m.writeConfigFile(t, "reviews-routing.yaml", reviewsRule(`  - route: [{destination: {host: reviews, subset: v2}}]
`))
	c.waitAll("v2", nil, 10*time.Second)
	if _, err := flaky("no-retries"); status.Code(err) != codes.Unavailable {
		t.Fatalf("without retries, a call whose first two attempts fail: got %v, want UNAVAILABLE", err)
	}

	m.writeConfigFile(t, "reviews-routing.yaml", reviewsRule(`  - route: [{destination: {host: reviews, subset: v2}}]
    retries: {attempts: 3, retryOn: unavailable, perTryTimeout: 2s}
`))
	// The route is the same apart from its retry policy: poll until a flaky call
	// succeeds, which only the retry policy allows.
	var err error
	if perr := poll(10*time.Second, func() bool {
		var v string
		v, err = flaky(fmt.Sprint("retried-", time.Now().UnixNano()))
		return err == nil && v == "v2"
	}); perr != nil {
		t.Fatalf("with 3 retries on unavailable, a call whose first two attempts fail still fails: %v\nconfig_dump:\n%s", err, m.ConfigDump(c.NodeID))
	}
}
