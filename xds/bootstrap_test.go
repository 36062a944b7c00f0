package xds_test

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/palisade-mesh/palisade/identity/wellknown"
	"github.com/palisade-mesh/palisade/xds"
)

var bootstrapOptions = xds.BootstrapOptions{NodeID: "n", XDSAddress: "127.0.0.1:15010", Namespace: "default"}

// accepted reports whether grpc-go accepts a bootstrap: an xDS server reads it (and
// creates its xDS client) when it is created, and the file_watcher certificate
// provider checks its configuration then.
func accepted(b []byte) error {
	s, err := grpcxds.NewGRPCServer(grpcxds.BootstrapContentsForTesting(b))
	if err == nil {
		s.Stop()
	}
	return err
}

// grpc-go reads the gRPC bootstrap, certificate providers included.
func TestGRPCBootstrapIsAcceptedByGRPC(t *testing.T) {
	withCerts := bootstrapOptions
	withCerts.CertDir = t.TempDir()
	for name, o := range map[string]xds.BootstrapOptions{"plain": bootstrapOptions, "certificates": withCerts} {
		b, err := xds.GRPCBootstrap(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := accepted(b); err != nil {
			t.Errorf("%s: grpc-go rejects the bootstrap: %v\n%s", name, err, b)
		}
		if name == "certificates" {
			if !strings.Contains(string(b), `"refresh_interval": "300s"`) {
				t.Errorf("refresh interval not in protobuf JSON form:\n%s", b)
			}
			// The check is real: a malformed plugin configuration is rejected.
			bad := strings.Replace(string(b), `"300s"`, `"5 minutes"`, 1)
			if err := accepted([]byte(bad)); err == nil {
				t.Error("grpc-go accepted a malformed certificate provider configuration")
			}
		}
	}
}

// The Envoy bootstrap validates and reaches the agent's SDS socket through the
// cluster the generated TLS configuration names.
func TestEnvoyBootstrapHasTheSDSCluster(t *testing.T) {
	o := bootstrapOptions
	for socket, want := range map[string]string{"": wellknown.Socket, "/run/agent/sds.sock": "/run/agent/sds.sock"} {
		o.SDSSocket = socket
		b, err := xds.EnvoyBootstrap(o, 15000, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := xds.Validate(b); err != nil {
			t.Fatal(err)
		}
		var pipe *core.Pipe
		for _, c := range b.GetStaticResources().GetClusters() {
			if c.Name == xds.SDSClusterName {
				pipe = c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe()
			}
		}
		if pipe.GetPath() != want {
			t.Errorf("SDSSocket %q: sds-grpc cluster reaches %v, want %s", socket, pipe, want)
		}
	}
}

// Both bootstrap kinds carry the workload's labels in the node metadata.
func TestBootstrapsCarryLabels(t *testing.T) {
	o := bootstrapOptions
	o.Labels = map[string]string{"app": "reviews", "version": "v2"}
	b, err := xds.EnvoyBootstrap(o, 15000, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.GetNode().GetMetadata().GetFields()[xds.MetaLabels].GetStructValue().GetFields()["version"].GetStringValue(); got != "v2" {
		t.Errorf("Envoy bootstrap: label version=%q, want v2", got)
	}
	g, err := xds.GRPCBootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(g), `"version": "v2"`) {
		t.Errorf("gRPC bootstrap lacks the labels:\n%s", g)
	}
}
