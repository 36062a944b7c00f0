package webhook_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/palisade-mesh/palisade/webhook"
)

// startServer serves the webhooks on a loopback port until the test ends and
// returns its base URL; Serve's result is checked at the end.
func startServer(t *testing.T, certs *testCertificates, injector, validator http.Handler) string {
	t.Helper()
	s, err := webhook.NewServer(webhook.ServerConfig{
		Address:        "127.0.0.1:0",
		GetCertificate: certs.getCertificate,
		Injector:       injector,
		Validator:      validator,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return "https://" + l.Addr().String()
}

func TestServer(t *testing.T) {
	certs := newTestCertificates(t)
	validator, err := webhook.NewValidator(webhook.ValidatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	url := startServer(t, certs, nil, validator)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: certs.pool},
		ForceAttemptHTTP2: true,
	}}
	t.Cleanup(client.CloseIdleConnections)

	resp, err := client.Get(url + webhook.HealthzPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" || resp.ProtoMajor != 2 {
		t.Errorf("healthz: %s %d %q, want HTTP/2 200 ok", resp.Proto, resp.StatusCode, body)
	}

	req := admissionOf(t, admissionv1.Create, invalidVirtualService)
	req.UID = testUID
	reviewJSON, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: typeMetaReview, Request: &req})
	resp, err = client.Post(url+webhook.ValidatePath, "application/json", bytes.NewReader(reviewJSON))
	if err != nil {
		t.Fatal(err)
	}
	var out admissionv1.AdmissionReview
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || out.Response == nil || out.Response.UID != testUID || out.Response.Allowed {
		t.Errorf("validate: %v %+v, want the invalid object refused", err, out.Response)
	}

	// No injector configured: its path is not served.
	resp, err = client.Post(url+webhook.InjectPath, "application/json", bytes.NewReader(reviewJSON))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("inject without an injector: HTTP %d, want 404", resp.StatusCode)
	}
}

func TestNewServerRequiresCertificate(t *testing.T) {
	if _, err := webhook.NewServer(webhook.ServerConfig{}); err == nil {
		t.Error("a server without GetCertificate was created")
	}
}
