package e2e

import (
	"fmt"
	"testing"

	"github.com/palisade-mesh/palisade/test/backend"
)

// Config files of the test mesh: the reviews service with two versions, like
// examples/mesh, but on the free ports the test backends got.

// reviewsYAML declares reviews.default.svc.cluster.local:9080 with instances v1 and v2
// listening on 127.0.0.1:v1Port and 127.0.0.1:v2Port.
func reviewsYAML(v1Port, v2Port int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: grpc, protocol: GRPC}
  resolution: STATIC
  workloadSelector:
    labels: {app: reviews}
---
%s---
%s`, workloadEntry("reviews-v1", "reviews", "v1", v1Port), workloadEntry("reviews-v2", "reviews", "v2", v2Port))
}

func workloadEntry(name, app, version string, port int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: %s
  namespace: default
spec:
  address: 127.0.0.1
  ports: {grpc: %d}
  labels: {app: %s, version: %s}
  locality: us-east/zone1
`, name, port, app, version)
}

// destinationRuleYAML names subsets v1 and v2 of reviews.
const destinationRuleYAML = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

// routingYAML is reviews' DestinationRule and a VirtualService sending
// "end-user: jason" to v2 and splitting the rest w1/w2 between v1 and v2.
func routingYAML(w1, w2 int) string {
	return destinationRuleYAML + fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - name: split
    route:
    - destination: {host: reviews, subset: v1}
      weight: %d
    - destination: {host: reviews, subset: v2}
      weight: %d
`, w1, w2)
}

// testMesh is a running palisaded serving reviews v1 and v2, with their backends.
type testMesh struct {
	*daemon
	V1, V2 *backend.Backend
}

// startMesh starts backends v1 and v2, writes the reviews service and a w1/w2 routing
// file into a fresh config directory, and starts palisaded on it.
func startMesh(t *testing.T, w1, w2 int) *testMesh {
	t.Helper()
	v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
	dir := t.TempDir()
	writeFile(t, dir, "reviews.yaml", reviewsYAML(v1.Port(), v2.Port()))
	writeFile(t, dir, "reviews-routing.yaml", routingYAML(w1, w2))
	return &testMesh{daemon: startPalisaded(t, dir), V1: v1, V2: v2}
}

// writeConfigFile is writeFile into the daemon's config directory.
func (m *testMesh) writeConfigFile(t *testing.T, name, content string) {
	t.Helper()
	writeFile(t, m.Dir, name, content)
}
