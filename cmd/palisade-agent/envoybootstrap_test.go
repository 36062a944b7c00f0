package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/xds"
)

// fakePod is a pod with this environment and these interface addresses.
func fakePod(env map[string]string, addrs ...string) podEnv {
	return podEnv{
		getenv:   func(k string) string { return env[k] },
		hostname: func() (string, error) { return "host-name", nil },
		interfaceAddrs: func() ([]net.Addr, error) {
			var out []net.Addr
			for _, a := range addrs {
				ip, n, err := net.ParseCIDR(a)
				if err != nil {
					return nil, err
				}
				n.IP = ip
				out = append(out, n)
			}
			return out, nil
		},
	}
}

// The written bootstrap is one Envoy accepts (it decodes as a Bootstrap and passes
// ValidateAll), reaches palisaded and the agent's SDS socket, and identifies the
// pod as Istio's sidecars do: node ID, namespace, service account, labels, IPs.
func TestWriteEnvoyBootstrap(t *testing.T) {
	dir := t.TempDir()
	labels := filepath.Join(dir, "labels")
	// As the kubelet writes the downward API file.
	if err := os.WriteFile(labels, []byte("app=\"reviews\"\npod-template-hash=\"5d4f8\"\nnote=\"say \\\"hi\\\"=1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(out, []byte("an older bootstrap"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := options{
		envoyBootstrap: out,
		xdsAddress:     "palisaded.palisade-system.svc:15010",
		podLabelsFile:  labels,
		socket:         "/var/run/palisade/agent.sock",
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/reviews")
	pod := fakePod(map[string]string{"POD_NAME": "reviews-5d4f8-x2x", "INSTANCE_IP": "10.244.1.7"})
	if err := writeEnvoyBootstrap(o, id, pod); err != nil {
		t.Fatal(err)
	}

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatalf("not YAML: %v\n%s", err, data)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v\n%s", err, data)
	}
	if err := xds.Validate(&b); err != nil {
		t.Fatalf("invalid: %v", err)
	}
	if got, want := b.GetNode().GetId(), "sidecar~10.244.1.7~reviews-5d4f8-x2x.shop~shop.svc.cluster.local"; got != want {
		t.Errorf("node ID %q, want %q", got, want)
	}
	md := b.GetNode().GetMetadata().AsMap()
	wantMD := map[string]any{
		xds.MetaNamespace:      "shop",
		xds.MetaServiceAccount: "reviews",
		xds.MetaInstanceIPs:    "10.244.1.7",
		xds.MetaLabels:         map[string]any{"app": "reviews", "pod-template-hash": "5d4f8", "note": `say "hi"=1`},
	}
	if diff := cmp.Diff(wantMD, md); diff != "" {
		t.Errorf("node metadata (-want +got):\n%s", diff)
	}
	endpoints := map[string]string{}
	for _, c := range b.GetStaticResources().GetClusters() {
		a := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
		if p := a.GetPipe(); p != nil {
			endpoints[c.GetName()] = p.GetPath()
		} else {
			sa := a.GetSocketAddress()
			endpoints[c.GetName()] = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	wantEndpoints := map[string]string{xds.XDSClusterName: "palisaded.palisade-system.svc:15010", xds.SDSClusterName: "/var/run/palisade/agent.sock"}
	if diff := cmp.Diff(wantEndpoints, endpoints); diff != "" {
		t.Errorf("cluster endpoints (-want +got):\n%s", diff)
	}
	if port := b.GetAdmin().GetAddress().GetSocketAddress(); port.GetAddress() != "127.0.0.1" || port.GetPortValue() != 15000 {
		t.Errorf("admin address %v, want 127.0.0.1:15000", port)
	}
	// Replaced whole: nothing but the bootstrap and the labels is left.
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"envoy.yaml", "labels"}) {
		t.Errorf("directory holds %v, want the bootstrap and the labels only", names)
	}
}

func TestWriteEnvoyBootstrapErrors(t *testing.T) {
	dir := t.TempDir()
	badLabels := filepath.Join(dir, "labels")
	if err := os.WriteFile(badLabels, []byte("app=\"reviews\"\nversion=v2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/reviews")
	good := options{envoyBootstrap: filepath.Join(dir, "envoy.yaml"), xdsAddress: "127.0.0.1:15010", socket: "/run/agent.sock"}
	withIP := fakePod(map[string]string{"INSTANCE_IP": "10.0.0.1"})
	tests := []struct {
		name string
		o    func(*options)
		pod  podEnv
		want string
	}{
		{"bad labels file", func(o *options) { o.podLabelsFile = badLabels }, withIP, `line 2: "version=v2" is not key="value"`},
		{"missing labels file", func(o *options) { o.podLabelsFile = filepath.Join(dir, "none") }, withIP, "--pod-labels-file: open"},
		{"bad xDS address", func(o *options) { o.xdsAddress = "palisaded" }, withIP, `xDS address "palisaded"`},
		{"bad INSTANCE_IP", func(*options) {}, fakePod(map[string]string{"INSTANCE_IP": "10.0.0"}), `INSTANCE_IP="10.0.0"`},
		{"no address", func(*options) {}, fakePod(nil, "127.0.0.1/8", "fe80::1/64"), "no IP address other than loopback"},
		{"directory missing", func(o *options) { o.envoyBootstrap = filepath.Join(dir, "no", "envoy.yaml") }, withIP, "no such file or directory"},
	}
	for _, tt := range tests {
		o := good
		tt.o(&o)
		err := writeEnvoyBootstrap(o, id, tt.pod)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "--envoy-bootstrap: ") {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	if _, err := os.Stat(good.envoyBootstrap); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed run left a bootstrap: %v", err)
	}
}

func TestInstanceIPs(t *testing.T) {
	tests := []struct {
		name string
		pod  podEnv
		want []string
	}{
		{"INSTANCE_IP", fakePod(map[string]string{"INSTANCE_IP": "10.244.1.7", "POD_IP": "10.9.9.9"}, "10.1.1.1/24"), []string{"10.244.1.7"}},
		{"POD_IP, dual-stack list", fakePod(map[string]string{"POD_IP": "10.244.1.7, fd00::7"}), []string{"10.244.1.7", "fd00::7"}},
		{
			"interfaces: IPv4 first, no loopback or link-local",
			fakePod(nil, "127.0.0.1/8", "::1/128", "fd00::7/64", "fe80::1/64", "10.244.1.7/24", "169.254.1.1/16", "10.244.1.7/32"),
			[]string{"10.244.1.7", "fd00::7"},
		},
	}
	for _, tt := range tests {
		got, err := instanceIPs(tt.pod)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
}

// Without POD_NAME, the node ID carries the host name, which Kubernetes sets to
// the pod's name.
func TestSidecarNodeIDFallsBackToHostName(t *testing.T) {
	o := options{xdsAddress: "127.0.0.1:15010", socket: "/run/agent.sock"}
	bo, err := sidecarBootstrapOptions(o, spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/reviews"), fakePod(nil, "10.1.1.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "sidecar~10.1.1.1~host-name.shop~shop.svc.cluster.local"; bo.NodeID != want {
		t.Errorf("node ID %q, want %q", bo.NodeID, want)
	}
}
