// Package e2e holds Palisade's end-to-end tests: they build the palisaded binary, run
// it as a user would on a temporary config directory with free loopback ports, and
// check routing through real proxyless gRPC data planes (grpc-go's xDS client and
// server in-process, and @grpc/grpc-js-xds on Node.js through test/node).
//
// Run them with `go test ./test/e2e/` (the race detector is fine too). They need
// the Go toolchain (to build palisaded) and, for node_test.go, node and npm on PATH
// with the npm registry reachable the first time (test/node/install.sh).
package e2e
