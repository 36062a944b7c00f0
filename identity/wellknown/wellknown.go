// Package wellknown holds the names palisade-agent and the configuration palisaded
// generates must agree on: the agent serves and writes under these names, and the
// Envoy and gRPC bootstraps and xDS resources refer to them.
package wellknown

// Socket is where palisade-agent serves the Workload API and SDS by default.
const Socket = "/var/run/palisade/agent.sock"

// The SDS secrets the agent serves, named as Istio names them.
const (
	// SecretCertificate is the workload's certificate chain and key.
	SecretCertificate = "default"
	// SecretRootCA is the trust bundle, as a validation context.
	SecretRootCA = "ROOTCA"
)

// The files the agent writes into a certificate directory (--cert-dir), which a
// gRPC bootstrap's file_watcher certificate provider reads.
const (
	CertChainFile = "cert-chain.pem"
	KeyFile       = "key.pem"
	RootCertFile  = "root-cert.pem"
)
