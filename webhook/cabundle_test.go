package webhook_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/palisade-mesh/palisade/webhook"
)

func mutatingConfiguration(caBundles ...[]byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	c := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: webhook.MutatingConfigurationName}}
	for i, ca := range caBundles {
		c.Webhooks = append(c.Webhooks, admissionregistrationv1.MutatingWebhook{
			Name: []string{"inject.palisade.dev", "other.palisade.dev"}[i], ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: ca},
		})
	}
	return c
}

func validatingConfiguration(caBundle []byte) *admissionregistrationv1.ValidatingWebhookConfiguration {
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: webhook.ValidatingConfigurationName},
		Webhooks:   []admissionregistrationv1.ValidatingWebhook{{Name: "validate.palisade.dev", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: caBundle}}},
	}
}

// caBundles returns the caBundle of every webhook of both configurations, mutating
// first; a configuration that does not exist contributes nothing.
func caBundles(ctx context.Context, client kubernetes.Interface) [][]byte {
	var out [][]byte
	if m, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhook.MutatingConfigurationName, metav1.GetOptions{}); err == nil {
		for _, w := range m.Webhooks {
			out = append(out, w.ClientConfig.CABundle)
		}
	}
	if v, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, webhook.ValidatingConfigurationName, metav1.GetOptions{}); err == nil {
		for _, w := range v.Webhooks {
			out = append(out, w.ClientConfig.CABundle)
		}
	}
	return out
}

// waitForCABundles waits until the webhooks' caBundles are n times want.
func waitForCABundles(t *testing.T, client kubernetes.Interface, n int, want []byte) {
	t.Helper()
	var got [][]byte
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		got = caBundles(ctx, client)
		if len(got) != n {
			return false, nil
		}
		for _, b := range got {
			if !bytes.Equal(b, want) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("caBundles %q, want %d times %q", got, n, want)
	}
}

func TestKeepCABundle(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	client := fake.NewClientset(mutatingConfiguration([]byte("stale"), nil))
	var bundle atomic.Pointer[[]byte]
	first := []byte("-----BEGIN CERTIFICATE-----\nfirst\n")
	bundle.Store(&first)
	kept := make(chan error, 1)
	go func() {
		kept <- webhook.KeepCABundle(ctx, webhook.KeepConfig{
			Client:   client,
			CABundle: func() []byte { return *bundle.Load() },
			Resync:   time.Second, // the informers' minimum
		})
	}()

	// The mutating configuration exists: both its webhooks are patched. The
	// validating one does not: that is no error, it is patched when created.
	waitForCABundles(t, client, 2, first)
	admission := client.AdmissionregistrationV1()
	if _, err := admission.ValidatingWebhookConfigurations().Create(ctx, validatingConfiguration(nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForCABundles(t, client, 3, first)

	// Someone applies the manifests again, with their empty caBundle.
	if _, err := admission.MutatingWebhookConfigurations().Update(ctx, mutatingConfiguration(nil, nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForCABundles(t, client, 3, first)

	// The CA's roots change: the next resync writes them.
	second := []byte("-----BEGIN CERTIFICATE-----\nsecond\n")
	bundle.Store(&second)
	waitForCABundles(t, client, 3, second)

	cancel()
	select {
	case err := <-kept:
		if err != nil {
			t.Errorf("KeepCABundle: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("KeepCABundle did not return after its context ended")
	}
}

// TestKeepCABundleWaitsForBundle checks that nothing is written while the CA has
// no roots to give.
func TestKeepCABundleWaitsForBundle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	client := fake.NewClientset(mutatingConfiguration([]byte("kept")))
	if err := webhook.KeepCABundle(ctx, webhook.KeepConfig{Client: client, CABundle: func() []byte { return nil }, Resync: time.Second}); err != nil {
		t.Fatal(err)
	}
	if got := caBundles(t.Context(), client); len(got) != 1 || string(got[0]) != "kept" {
		t.Errorf("caBundles %q, want the configuration untouched", got)
	}
}

func TestKeepCABundleRequiresClientAndBundle(t *testing.T) {
	if err := webhook.KeepCABundle(t.Context(), webhook.KeepConfig{}); err == nil {
		t.Error("no error without Client and CABundle")
	}
}
