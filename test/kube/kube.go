// Package kube runs a real Kubernetes control plane (kube-apiserver and etcd, on
// loopback) for tests and benchmarks, through controller-runtime's envtest.
//
// The binaries are those scripts/kube.sh builds from the Go module proxy: the folder
// named by KUBEBUILDER_ASSETS (scripts/test.sh sets it), or else the script is run,
// which builds them once into the gitignored .cache/kube.
package kube

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Cluster is a running kube-apiserver with its etcd.
type Cluster struct {
	// Config authenticates as a cluster administrator (group system:masters).
	Config *rest.Config
	// Kubeconfig is a kubeconfig file with the same credentials, for kubectl.
	Kubeconfig string
	Client     kubernetes.Interface
	Dynamic    dynamic.Interface

	env *envtest.Environment
	dir string
}

// RepoRoot is the root of the Palisade checkout this package was built from.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	assetsOnce sync.Once
	assetsDir  string
	assetsErr  error
)

// Assets returns the folder holding kube-apiserver and etcd, building them with
// scripts/kube.sh when KUBEBUILDER_ASSETS is not set (once per process).
func Assets() (string, error) {
	assetsOnce.Do(func() {
		if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
			assetsDir = dir
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command(filepath.Join(RepoRoot(), "scripts", "kube.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			assetsErr = fmt.Errorf("scripts/kube.sh: %w\n%s", err, stderr.String())
			return
		}
		assetsDir = strings.TrimSpace(string(out))
	})
	return assetsDir, assetsErr
}

// StartCluster starts a control plane; Stop ends it. Tests use Start instead.
func StartCluster() (*Cluster, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: time.Minute, // a loaded 2-core machine can be slow
		ControlPlaneStopTimeout:  time.Minute,
	}
	api := env.ControlPlane.GetAPIServer().Configure()
	// Loopback only: nothing to advertise beyond it, and no kubernetes Service
	// endpoints to keep (the reconciler would try to write a non-loopback address).
	api.Set("advertise-address", "127.0.0.1")
	api.Set("endpoint-reconciler-type", "none")
	// envtest's default range holds 256 Services; the benchmark creates 1,000.
	api.Set("service-cluster-ip-range", "10.96.0.0/16")
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, err)
	}
	c := &Cluster{Config: cfg, env: env}
	if err := c.init(); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) init() error {
	var err error
	if c.dir, err = os.MkdirTemp("", "palisade-kube-"); err != nil {
		return err
	}
	admin, err := c.env.AddUser(envtest.User{Name: "palisade-test-admin", Groups: []string{"system:masters"}}, c.Config)
	if err != nil {
		return fmt.Errorf("creating the admin user: %w", err)
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kubeconfig, 0o600); err != nil {
		return err
	}
	c.Config = admin.Config()
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	c.Dynamic, err = dynamic.NewForConfig(c.Config)
	return err
}

// Stop stops the control plane and removes its files.
func (c *Cluster) Stop() error {
	err := c.env.Stop()
	if c.dir != "" {
		err = errors.Join(err, os.RemoveAll(c.dir))
	}
	return err
}

// Start starts a control plane for one test, stopped when the test ends.
func Start(t testing.TB) *Cluster {
	t.Helper()
	c, err := StartCluster()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping kube-apiserver: %v", err)
		}
	})
	return c
}

// Kubectl runs kubectl against the cluster with stdin (may be empty) and returns its
// combined output.
func (c *Cluster) Kubectl(t testing.TB, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ApplyCRDs applies Palisade's CRDs (deploy/crds) and waits until they are served.
func (c *Cluster) ApplyCRDs(t testing.TB) {
	t.Helper()
	dir := filepath.Join(RepoRoot(), "deploy", "crds")
	if out, err := c.Kubectl(t, "", "apply", "--server-side", "-f", dir); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", dir, err, out)
	}
	if out, err := c.Kubectl(t, "", "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
		t.Fatalf("waiting for the CRDs: %v\n%s", err, out)
	}
}

// ServiceAccountSigningKey is the PEM private key the API server signs
// service-account tokens with: tests forge tokens with it (an expired one, say) to
// check that the API server, not the test, refuses them.
func (c *Cluster) ServiceAccountSigningKey() ([]byte, error) {
	return os.ReadFile(filepath.Join(c.env.ControlPlane.GetAPIServer().CertDir, "sa-signer.key"))
}
