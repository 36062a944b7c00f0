package caclient_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-mesh/palisade/identity/kubetoken"
	"github.com/palisade-mesh/palisade/test/kube"
)

// TestServiceAccountToken: in Kubernetes, an agent's first CSR is authenticated by
// its pod's service-account token, which the real API server reviews; the CA issues
// exactly the service account's SPIFFE ID and no other.
func TestServiceAccountToken(t *testing.T) {
	cluster := kube.Start(t)
	ctx := context.Background()
	if _, err := cluster.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reviews"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(audience string) string {
		req, err := cluster.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "reviews", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return req.Status.Token
	}
	reviewer, err := kubetoken.New(kubetoken.Config{TokenReviews: cluster.Client.AuthenticationV1(), TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	f := startCAWith(t, reviewer)
	c := f.client(t)

	tok := token(kubetoken.DefaultAudience)
	svid, _, err := c.SignWithToken(ctx, reviews, tok, 0)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != reviews || len(svid.Certificates[0].URIs) != 1 || svid.Certificates[0].URIs[0].String() != "spiffe://cluster.local/ns/default/sa/reviews" {
		t.Fatalf("issued %s (URIs %v), want exactly %s", svid.ID, svid.Certificates[0].URIs, reviews)
	}
	// The same token does not get another identity.
	_, _, err = c.SignWithToken(ctx, ratings, tok, 0)
	wantCode(t, err, codes.PermissionDenied, ratings.String())
	// A token for another audience is refused.
	_, _, err = c.SignWithToken(ctx, reviews, token("kubernetes"), 0)
	wantCode(t, err, codes.Unauthenticated, "rejected")
}
