// Package agent is the serving side of palisade-agent: it holds the SVIDs and
// trust bundles the agent obtained (Store) and hands them to workloads over one
// Unix socket (Server) and as files (WriteFiles).
//
// On the socket, one gRPC server carries:
//
//   - the SPIFFE Workload API (X.509-SVID and JWT-SVID profiles; the optional
//     WIT-SVID profile answers Unimplemented), for applications using a SPIFFE
//     library;
//   - Envoy SDS (SotW and delta), serving Istio's secret names "default"
//     (certificate and key) and "ROOTCA" (validation context; Envoy's SPIFFE
//     validator once federated trust domains exist).
//
// Callers are identified by SO_PEERCRED, read once per connection by the
// server's transport credentials, and an Attestor maps them to identities on
// every request. The socket is created 0600 by default and only exposed through
// its final path after mode and group are set.
//
// Choices:
//
//   - Streams first wait, rather than fail, while the agent has not yet got
//     the caller's SVID or bundle, so a workload starting beside its agent
//     blocks in its first fetch instead of backing off. A caller the Attestor
//     gives no identity is denied (PermissionDenied) at once.
//   - A stream sends again only when what that caller receives changed; it
//     re-attests on each store change, and ends with PermissionDenied if all
//     its SVIDs were withdrawn.
//   - Encodings (DER chain, PKCS#8, PEM) are made once per SetSVID/SetBundles
//     (about 26µs per P-256 SVID, some 15-20% of a whole fetch over the
//     socket), and the X509SVIDResponse is assembled once per identity set and
//     store generation (1.4µs -> 17ns). What remains of a fetch is gRPC stream
//     setup and the client's own parsing, so no pre-encoded wire bytes are
//     kept (BenchmarkFetchX509SVID, BenchmarkX509SVIDView).
//   - SDS uses one go-control-plane linear cache and server per identity, so
//     a stream can only ever see its own identity's key.
package agent
