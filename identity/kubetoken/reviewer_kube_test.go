package kubetoken_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-mesh/palisade/identity/kubetoken"
	"github.com/palisade-mesh/palisade/test/kube"
)

// TestReviewerAgainstAPIServer has the real API server review real tokens.
func TestReviewerAgainstAPIServer(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	for _, sa := range []string{"reviews", "ratings"} {
		if _, err := c.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	token := func(sa, audience string) string {
		t.Helper()
		req, err := c.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return req.Status.Token
	}
	r, err := kubetoken.New(kubetoken.Config{TokenReviews: c.Client.AuthenticationV1(), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}

	reviews := token("reviews", "palisade")
	if !kubetoken.IsServiceAccountToken(reviews) {
		t.Fatalf("a real token is not recognized as a service-account token")
	}
	for _, tc := range []struct{ sa, want string }{
		{"reviews", "spiffe://cluster.local/ns/default/sa/reviews"},
		{"ratings", "spiffe://cluster.local/ns/default/sa/ratings"},
	} {
		id, err := r.Redeem(token(tc.sa, "palisade"))
		if err != nil || id.String() != tc.want {
			t.Errorf("Redeem(token of %s) = %v, %v; want %s", tc.sa, id, err, tc.want)
		}
	}
	// A token stays good until it expires (Kubernetes rotates it in the pod).
	if id, err := r.Redeem(reviews); err != nil || id.String() != "spiffe://cluster.local/ns/default/sa/reviews" {
		t.Errorf("second Redeem of the same token = %v, %v", id, err)
	}

	// The forgery is sound: re-signed with its times unchanged, the token is accepted.
	if id, err := r.Redeem(forge(t, c, reviews, 0)); err != nil || id.String() != "spiffe://cluster.local/ns/default/sa/reviews" {
		t.Fatalf("re-signed token: Redeem = %v, %v; want it accepted", id, err)
	}
	expired := forge(t, c, reviews, -2*time.Hour)
	for name, tok := range map[string]string{
		"other audience":   token("reviews", "vault"),
		"expired":          expired,
		"tampered":         reviews[:len(reviews)-4] + "AAAA",
		"not a JWT at all": "a.b.c",
	} {
		if id, err := r.Redeem(tok); !errors.Is(err, kubetoken.ErrRejected) {
			t.Errorf("%s: Redeem = %v, %v; want ErrRejected", name, id, err)
		}
	}
	// A deleted service account's tokens die with it.
	if err := c.Client.CoreV1().ServiceAccounts("default").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server looks the account up in its cache: allow it a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		id, err := r.Redeem(reviews)
		if errors.Is(err, kubetoken.ErrRejected) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token of a deleted service account: Redeem = %v, %v; want ErrRejected", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// forge re-signs a real token's claims with the API server's own key, its times moved
// by shift: only the times differ from a token the API server issued.
func forge(t *testing.T, c *kube.Cluster, token string, shift time.Duration) string {
	t.Helper()
	keyPEM, err := c.ServiceAccountSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("no PEM block in the signing key")
	}
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	var signer crypto.Signer = key
	if err != nil {
		k, err2 := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err2 != nil {
			t.Fatalf("signing key: %v / %v", err, err2)
		}
		signer = k.(crypto.Signer)
	}
	parts := strings.Split(token, ".")
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(header, &h); err != nil {
		t.Fatal(err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	for _, claim := range []string{"iat", "nbf", "exp"} {
		if v, ok := claims[claim].(float64); ok {
			claims[claim] = int64(v) + int64(shift.Seconds())
		}
	}
	if inner, ok := claims["kubernetes.io"].(map[string]any); ok {
		// Tokens carry a warnafter time too; move it along.
		if v, ok := inner["warnafter"].(float64); ok {
			inner["warnafter"] = int64(v) + int64(shift.Seconds())
		}
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(h.Alg), Key: signer}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", h.Kid))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return forged
}
