// Package meshgen writes synthetic meshes for benchmarks and scale tests: n gRPC
// services in namespace default, each with an address (as a Kubernetes ClusterIP),
// two versions (an endpoint per version), a DestinationRule with subsets v1 and v2
// and a VirtualService that splits traffic between them.
package meshgen

import (
	"fmt"
	"strings"
)

// Host is the host name of service i.
func Host(i int) string { return fmt.Sprintf("svc%d.default.svc.cluster.local", i) }

// Service returns the YAML of service i, sending weightV2 percent of its traffic to v2.
func Service(i, weightV2 int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc%[1]d, namespace: default}
spec:
  hosts: [svc%[1]d.default.svc.cluster.local]
  addresses: [240.%[2]d.%[3]d.1]
  ports: [{number: 9080, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints:
  - {address: 10.%[2]d.%[3]d.1, labels: {version: v1}, locality: us-east/zone1}
  - {address: 10.%[2]d.%[3]d.2, labels: {version: v2}, locality: us-east/zone2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc%[1]d, namespace: default}
spec:
  host: svc%[1]d
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc%[1]d, namespace: default}
spec:
  hosts: [svc%[1]d]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: svc%[1]d, subset: v2}}]
  - route:
    - {destination: {host: svc%[1]d, subset: v1}, weight: %[4]d}
    - {destination: {host: svc%[1]d, subset: v2}, weight: %[5]d}
    timeout: 5s
`, i, i/250%250, i%250, 100-weightV2, weightV2)
}

// Mesh returns the YAML of services [0, n), all split 80/20.
func Mesh(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString("---\n")
		}
		b.WriteString(Service(i, 20))
	}
	return b.String()
}
