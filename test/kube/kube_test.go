package kube

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestCluster checks what the suites rely on: objects written through the client are
// read by kubectl, and the TokenRequest API issues service-account tokens.
func TestCluster(t *testing.T) {
	c := Start(t)
	ctx := context.Background()
	if _, err := c.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reviews"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err := c.Kubectl(t, "", "get", "serviceaccount", "reviews", "-o", "jsonpath={.metadata.name}")
	if err != nil || out != "reviews" {
		t.Fatalf("kubectl get serviceaccount reviews = %q, %v", out, err)
	}
	token, err := c.Kubectl(t, "", "create", "token", "reviews", "--audience", "palisade")
	if err != nil || strings.Count(strings.TrimSpace(token), ".") != 2 {
		t.Fatalf("kubectl create token = %q, %v; want a JWT", token, err)
	}
}
