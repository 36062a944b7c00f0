package kubeca_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-mesh/palisade/identity"
	"github.com/palisade-mesh/palisade/identity/kubeca"
	"github.com/palisade-mesh/palisade/test/kube"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func openCA(dataDir string) func() (*identity.CA, error) {
	return func() (*identity.CA, error) {
		return identity.NewCA(identity.CAConfig{TrustDomain: td, DataDir: dataDir})
	}
}

// TestShare: replicas starting at once end up with one CA, stored in the Secret, and a
// replica starting later loads it.
func TestShare(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	secrets := c.Client.CoreV1().Secrets("default")
	cas := make([]*identity.CA, 3)
	var wg sync.WaitGroup
	for i := range 2 {
		dir := t.TempDir()
		wg.Go(func() {
			ca, err := kubeca.Share(ctx, secrets, kubeca.DefaultSecretName, filepath.Join(dir, "ca"), openCA(dir))
			if err != nil {
				t.Error(err)
			}
			cas[i] = ca
		})
	}
	wg.Wait()
	late := t.TempDir()
	ca, err := kubeca.Share(ctx, secrets, kubeca.DefaultSecretName, filepath.Join(late, "ca"), openCA(late))
	if err != nil || cas[0] == nil || cas[1] == nil {
		t.Fatal(err)
	}
	cas[2] = ca
	for i, ca := range cas[1:] {
		if !ca.Bundle().Equal(cas[0].Bundle()) {
			t.Errorf("replica %d has another CA than replica 0", i+1)
		}
	}

	// A Secret that is not a CA state is an error, not a new CA.
	for name, data := range map[string]map[string][]byte{
		"corrupt": {"state.json": []byte("{")},
		"hidden":  {".state.json": []byte("{}")},
	} {
		if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if ca, err := kubeca.Share(ctx, secrets, name, filepath.Join(dir, "ca"), openCA(dir)); err == nil {
			t.Errorf("Secret %s: Share made a CA (%v)", name, ca.Bundle().X509Authorities()[0].Subject)
		}
	}
}

// TestPublishRoots: every namespace gets the roots, also one created later; an edited
// or deleted ConfigMap is restored; changed roots are written everywhere.
func TestPublishRoots(t *testing.T) {
	c := kube.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	roots, changed := []byte("ROOTS-1\n"), make(chan struct{})
	cfg := kubeca.RootsConfig{
		Client:  c.Client,
		Roots:   func() []byte { mu.Lock(); defer mu.Unlock(); return roots },
		Changed: func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return changed },
	}
	done := make(chan error, 1)
	go func() { done <- kubeca.PublishRoots(ctx, cfg) }()

	waitFor := func(ns, want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, kubeca.RootConfigMap, metav1.GetOptions{})
			if err == nil && cm.Data[kubeca.RootKey] == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("namespace %s: ConfigMap %s = %v, %v; want roots %q", ns, kubeca.RootConfigMap, cm, err, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("default", "ROOTS-1\n")
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("shop", "ROOTS-1\n")

	cm, err := c.Client.CoreV1().ConfigMaps("shop").Get(ctx, kubeca.RootConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[kubeca.RootKey] = "forged"
	if _, err := c.Client.CoreV1().ConfigMaps("shop").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("shop", "ROOTS-1\n")
	if err := c.Client.CoreV1().ConfigMaps("default").Delete(ctx, kubeca.RootConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("default", "ROOTS-1\n")

	mu.Lock()
	roots, old := []byte("ROOTS-2\n"), changed
	changed = make(chan struct{})
	mu.Unlock()
	close(old)
	waitFor("default", "ROOTS-2\n")
	waitFor("shop", "ROOTS-2\n")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("PublishRoots = %v", err)
	}
}
