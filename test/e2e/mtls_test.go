package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/palisade-mesh/palisade/identity/wellknown"
	"github.com/palisade-mesh/palisade/test/backend"
	"github.com/palisade-mesh/palisade/test/syncbuf"
	"github.com/palisade-mesh/palisade/xds"
)

// greeterYAML is a service in namespace mtls whose one instance runs a sidecar
// (label security.istio.io/tlsMode=istio) as service account greeter, and a
// namespace-wide STRICT PeerAuthentication.
func greeterYAML(port int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: greeter, namespace: mtls}
spec:
  hosts: [greeter.mtls.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: grpc, protocol: GRPC}
  resolution: STATIC
  workloadSelector:
    labels: {app: greeter}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: greeter-1, namespace: mtls}
spec:
  address: 127.0.0.1
  ports: {grpc: %d}
  labels: {app: greeter, security.istio.io/tlsMode: istio}
  serviceAccount: greeter
  locality: us-east/zone1
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mtls}
spec:
  mtls: {mode: STRICT}
`, port)
}

// agent is a running palisade-agent that writes its certificates into CertDir.
type agent struct {
	CertDir string
	Socket  string // the Workload API and SDS
	out     *syncbuf.Buffer
}

// startAgent creates a bootstrap token with palisadectl and starts palisade-agent
// for spiffe://cluster.local/ns/NS/sa/SA, asking for SVIDs of the given lifetime,
// with extra flags.
func startAgent(t *testing.T, d *daemon, ns, sa string, ttl time.Duration, extra ...string) *agent {
	t.Helper()
	dir := t.TempDir()
	id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa)
	token, err := exec.Command(ctlBin, "identity", "token", "create", "--spiffe-id", id, "--admin-socket", filepath.Join(d.DataDir, "admin.sock")).Output()
	if err != nil {
		t.Fatalf("palisadectl identity token create: %v", err)
	}
	writeFile(t, dir, "token", string(token))
	a := runAgent(t, d, dir, id, filepath.Join(dir, "token"), ttl, extra...)
	if err := poll(15*time.Second, func() bool { return a.leaf() != nil }); err != nil {
		t.Fatalf("agent for %s wrote no certificate: %v\n%s", id, err, a.out.String())
	}
	return a
}

// runAgent starts palisade-agent for the identity id with the token in tokenFile
// (a bootstrap token or a Kubernetes service-account token), its files under dir.
func runAgent(t *testing.T, d *daemon, dir, id, tokenFile string, ttl time.Duration, extra ...string) *agent {
	t.Helper()
	a := &agent{CertDir: filepath.Join(dir, "certs"), Socket: filepath.Join(dir, "agent.sock"), out: &syncbuf.Buffer{}}
	cmd := exec.Command(agentBin, "--ca-address", d.CAAddr, "--ca-bundle", filepath.Join(d.DataDir, "root-cert.pem"),
		"--spiffe-id", id, "--token-file", tokenFile, "--socket", a.Socket,
		"--cert-dir", a.CertDir, "--svid-ttl", ttl.String(), "--monitoring-address", "", "--log-level", "debug")
	cmd.Args = append(cmd.Args, extra...)
	cmd.Stdout, cmd.Stderr = a.out, a.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if strings.Contains(a.out.String(), "WARNING: DATA RACE") {
			t.Errorf("palisade-agent (built with -race) reported a data race")
		}
		if t.Failed() {
			t.Logf("--- palisade-agent %s output ---\n%s", id, a.out.String())
		}
	})
	return a
}

// leaf returns the certificate currently in the agent's files, or nil.
func (a *agent) leaf() *x509.Certificate {
	data, err := os.ReadFile(filepath.Join(a.CertDir, wellknown.CertChainFile))
	if err != nil {
		return nil
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return c
}

func mtlsBootstrap(t *testing.T, d *daemon, nodeID, sa, certDir string, labels map[string]string) []byte {
	t.Helper()
	b, err := xds.GRPCBootstrap(xds.BootstrapOptions{
		NodeID: nodeID, XDSAddress: d.XDSAddr, Namespace: "mtls", ServiceAccount: sa,
		Labels: labels, InstanceIPs: []string{"127.0.0.1"},
		CertDir: certDir, CertRefresh: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// callPeer makes one call and returns the client certificate the server saw.
func callPeer(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	var header metadata.MD
	_, err := testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&header))
	if err != nil {
		return "", err
	}
	return strings.Join(header.Get(backend.PeerHeader), ","), nil
}

// Under STRICT mTLS, a grpc-go xDS server and client get certificates from
// palisade-agent's files: the client's calls carry its SPIFFE identity, a plaintext
// client is refused, and while calls run without pause, certificates with a 30 s
// lifetime rotate at least twice and palisaded restarts, without one failed call.
func TestMTLSWithAgentCertificates(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, dir, "greeter.yaml", greeterYAML(lis.Addr().(*net.TCPAddr).Port))
	d := startPalisaded(t, dir)
	rootBefore, err := os.ReadFile(filepath.Join(d.DataDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}

	const ttl = 30 * time.Second
	serverAgent := startAgent(t, d, "mtls", "greeter", ttl)
	clientAgent := startAgent(t, d, "mtls", "caller", ttl)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := backend.StartXDS(ctx, backend.XDSConfig{
		Config:    backend.Config{Listener: lis, Version: "greeter"},
		Bootstrap: mtlsBootstrap(t, d, "e2e-greeter~server", "greeter", serverAgent.CertDir, map[string]string{"app": "greeter"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = srv.Stop() })
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := srv.WaitServing(wctx); err != nil {
		t.Fatalf("greeter never served: %v\n%s", err, d.ConfigDump("e2e-greeter~server"))
	}

	const target = "xds:///greeter.mtls.svc.cluster.local:9080"
	var seq atomic.Int32
	dial := func() *grpc.ClientConn {
		node := fmt.Sprintf("e2e-caller~client-%d", seq.Add(1))
		conn, err := backend.Dial(target, mtlsBootstrap(t, d, node, "caller", clientAgent.CertDir, map[string]string{"app": "caller"}))
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	conn := dial()
	defer conn.Close()
	var peerSeen string
	if err := poll(20*time.Second, func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		peerSeen, err = callPeer(cctx, conn)
		return err == nil
	}); err != nil {
		t.Fatalf("mTLS client never reached greeter: %v (last error %v)\n%s", err, err, d.ConfigDump("e2e-caller~client-1"))
	}
	if want := "spiffe://cluster.local/ns/mtls/sa/caller "; !strings.HasPrefix(peerSeen, want) {
		t.Fatalf("server saw client certificate %q, want %q...", peerSeen, want)
	}

	// The mesh trusts what the agent serves, and the agent serves it whole: its
	// identity, the root palisaded wrote, and JWT-SVIDs minted by palisaded that
	// validate against the served JWT bundle.
	checkWorkloadAPI(t, clientAgent.Socket, "spiffe://cluster.local/ns/mtls/sa/caller", rootBefore)

	// A client without TLS gets the same configuration but cannot connect.
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap(t, d, "e2e-plaintext~client", nil))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := callPeer(pctx, plain); err == nil {
		t.Fatal("a plaintext call reached a STRICT mTLS server")
	}
	pcancel()

	// Calls without pause on one connection, and a new connection every few
	// seconds (a new handshake, with the certificates of that moment).
	var failed, ok atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := callPeer(cctx, conn)
			ccancel()
			if err != nil {
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			} else {
				ok.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	clientCerts := map[string]bool{peerSeen: true}
	serverSerials := map[string]bool{serverAgent.leaf().SerialNumber.String(): true}
	restarted := false
	start := time.Now()
	for time.Since(start) < 70*time.Second && (len(clientCerts) < 3 || len(serverSerials) < 3 || !restarted) {
		time.Sleep(3 * time.Second)
		if !restarted && time.Since(start) > 20*time.Second {
			d.stop()
			d.start(t, true)
			restarted = true
		}
		fresh := dial()
		var seen string
		err := poll(20*time.Second, func() bool {
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			defer ccancel()
			var err error
			seen, err = callPeer(cctx, fresh)
			return err == nil
		})
		fresh.Close()
		if err != nil {
			t.Fatalf("a new mTLS connection failed after %v: %v", time.Since(start).Round(time.Second), err)
		}
		clientCerts[seen] = true
		if l := serverAgent.leaf(); l != nil {
			serverSerials[l.SerialNumber.String()] = true
		}
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d continuous calls failed; first: %v", n, n+ok.Load(), firstFailure.Load())
	}
	if len(clientCerts) < 3 {
		t.Errorf("server saw %d client certificates in %v, want the first and at least two renewals", len(clientCerts), time.Since(start).Round(time.Second))
	}
	if len(serverSerials) < 3 {
		t.Errorf("server agent wrote %d certificates in %v, want the first and at least two renewals", len(serverSerials), time.Since(start).Round(time.Second))
	}
	if !restarted {
		t.Error("palisaded was not restarted")
	}
	rootAfter, err := os.ReadFile(filepath.Join(d.DataDir, "root-cert.pem"))
	if err != nil || !bytes.Equal(rootBefore, rootAfter) {
		t.Errorf("the root changed across the restart of palisaded (%v)", err)
	}
	t.Logf("%d continuous calls, %d client certificates seen, %d server certificates, in %v", ok.Load(), len(clientCerts), len(serverSerials), time.Since(start).Round(time.Second))
}

// checkWorkloadAPI reads an agent's socket with go-spiffe's Workload API client.
func checkWorkloadAPI(t *testing.T, socket, wantID string, rootPEM []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svid := x509ctx.DefaultSVID()
	if svid.ID.String() != wantID {
		t.Fatalf("Workload API serves %s, want %s", svid.ID, wantID)
	}
	root, _ := pem.Decode(rootPEM)
	bundle, err := x509ctx.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil || len(bundle.X509Authorities()) == 0 || !bytes.Equal(bundle.X509Authorities()[0].Raw, root.Bytes) {
		t.Fatalf("Workload API bundle does not hold palisaded's root (%v)", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509ctx.Bundles); err != nil {
		t.Fatalf("served SVID does not verify against the served bundle: %v", err)
	}
	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	if jwt.ID.String() != wantID {
		t.Fatalf("JWT-SVID for %s, want %s", jwt.ID, wantID)
	}
	if _, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "payments"); err != nil {
		t.Fatalf("the agent does not validate its own JWT-SVID: %v", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "someone-else"); err == nil {
		t.Fatal("a JWT-SVID validated for another audience")
	}
}
