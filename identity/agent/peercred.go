package agent

import (
	"context"
	"errors"
	"net"
	"strconv"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Caller is who is on the other side of the socket, from SO_PEERCRED: the
// credentials of the process that called connect(2), read once per connection.
// UID and GID are fixed for the connection's life. PID is as of connect(2): an
// attestor that inspects /proc/<pid> must allow for the process having exited
// and the PID being reused since.
type Caller struct{ PID, UID, GID int }

func (c Caller) String() string {
	return "pid=" + strconv.Itoa(c.PID) + " uid=" + strconv.Itoa(c.UID) + " gid=" + strconv.Itoa(c.GID)
}

// AuthInfo is the credentials.AuthInfo of a connection accepted by PeerCredentials.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Caller Caller
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// PeerCredentials returns gRPC server transport credentials that identify the
// client of a Unix socket by its kernel-reported credentials. There is no wire
// handshake, so plaintext gRPC clients (as the SPIFFE Workload Endpoint spec
// requires, and Envoy's SDS client) connect unchanged.
func PeerCredentials() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

var errNotUnix = errors.New("peercred: connection is not a Unix socket")

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := callerOf(conn)
	if err != nil {
		return nil, nil, err
	}
	// The kernel vouches for the peer and the bytes never leave the host, as
	// grpc's own "local" credentials rate a Unix socket.
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Caller: c}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: server-side credentials only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }

// CallerFromContext returns the caller of a gRPC request served with PeerCredentials.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	return ai.Caller, ok
}
