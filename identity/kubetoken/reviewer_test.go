package kubetoken

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestRedeemStatus covers the answers of the API server a real one gives rarely:
// the mapping must refuse everything but a service account reviewed for Palisade.
func TestRedeemStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status authenticationv1.TokenReviewStatus
		want   string // "" for ErrRejected
	}{
		{"service account", authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"palisade"},
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:prod:reviews"}}, "spiffe://cluster.local/ns/prod/sa/reviews"},
		{"not authenticated", authenticationv1.TokenReviewStatus{Error: "token expired"}, ""},
		{"no audience confirmed", authenticationv1.TokenReviewStatus{Authenticated: true,
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:prod:reviews"}}, ""},
		{"a user, not a service account", authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"palisade"},
			User: authenticationv1.UserInfo{Username: "alice"}}, ""},
		{"node", authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"palisade"},
			User: authenticationv1.UserInfo{Username: "system:node:worker-1"}}, ""},
		{"extra colon", authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"palisade"},
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:prod:a:b"}}, ""},
		{"empty namespace", authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"palisade"},
			User: authenticationv1.UserInfo{Username: "system:serviceaccount::reviews"}}, ""},
		{"path characters", authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"palisade"},
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:prod:a/b"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			var asked []string
			client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				review := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
				asked = review.Spec.Audiences
				review.Status = tc.status
				return true, review, nil
			})
			r, err := New(Config{TokenReviews: client.AuthenticationV1(), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
			if err != nil {
				t.Fatal(err)
			}
			id, err := r.Redeem("h.p.s")
			if len(asked) != 1 || asked[0] != DefaultAudience {
				t.Errorf("review asked for audiences %v, want [%s]", asked, DefaultAudience)
			}
			if tc.want == "" {
				if !errors.Is(err, ErrRejected) {
					t.Errorf("Redeem = %v, %v; want ErrRejected", id, err)
				}
				return
			}
			if err != nil || id.String() != tc.want {
				t.Errorf("Redeem = %v, %v; want %s", id, err, tc.want)
			}
		})
	}
}

func TestIsServiceAccountToken(t *testing.T) {
	for token, want := range map[string]bool{
		"eyJh.eyJz.c2ln": true,
		"pal1.abcdef":    false, // a bootstrap token
		"a.b.c.d":        false,
		"a.b c.d":        false,
	} {
		if got := IsServiceAccountToken(token); got != want {
			t.Errorf("IsServiceAccountToken(%q) = %v, want %v", token, got, want)
		}
	}
}
