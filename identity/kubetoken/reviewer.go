// Package kubetoken authenticates workloads in Kubernetes by their service-account
// tokens: the Kubernetes API server reviews the token (TokenReview), bound to
// Palisade's audience, and the token's service account names the one SPIFFE ID the
// caller may have, spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT.
package kubetoken

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// DefaultAudience is the audience a service-account token must be issued for; the
// injected pods' projected token carries it. A token for another audience (the
// pod's default API token, for one) is refused, so that a token leaked to another
// service cannot be replayed here.
const DefaultAudience = "palisade"

// ErrRejected marks a token the API server did not accept for Palisade.
var ErrRejected = errors.New("service-account token rejected")

// serviceAccountPrefix starts the user name of every service-account token.
const serviceAccountPrefix = "system:serviceaccount:"

// Config configures a Reviewer.
type Config struct {
	// TokenReviews is the API the tokens are reviewed by (a clientset's
	// AuthenticationV1()).
	TokenReviews authenticationclient.TokenReviewsGetter
	TrustDomain  spiffeid.TrustDomain
	// Audience the token must be bound to; empty means DefaultAudience.
	Audience string
	// Timeout bounds one review; 0 means 10 seconds.
	Timeout time.Duration
}

// Reviewer turns service-account tokens into SPIFFE IDs.
type Reviewer struct {
	cfg Config
}

// New returns a Reviewer.
func New(cfg Config) (*Reviewer, error) {
	if cfg.TokenReviews == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("kubetoken: TokenReviews and TrustDomain are required")
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Reviewer{cfg: cfg}, nil
}

// IsServiceAccountToken reports whether token has the shape of a Kubernetes
// service-account token (a JWT), as opposed to one of palisaded's bootstrap tokens.
func IsServiceAccountToken(token string) bool {
	return strings.Count(token, ".") == 2 && !strings.ContainsAny(token, " \t\n")
}

// Redeem reviews token and returns the SPIFFE ID of its service account. Unlike a
// bootstrap token, a service-account token stays good until it expires: Kubernetes
// rotates it in the pod.
func (r *Reviewer) Redeem(token string) (spiffeid.ID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	review, err := r.cfg.TokenReviews.TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		// Not the caller's fault: the CA cannot reach the API server.
		return spiffeid.ID{}, fmt.Errorf("reviewing a service-account token: %w", err)
	}
	st := review.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return spiffeid.ID{}, fmt.Errorf("%w: %s", ErrRejected, reason)
	}
	// The API server answers with the audiences the token is valid for among those
	// asked; an empty list means the token was not checked against any.
	if !slices.Contains(st.Audiences, r.cfg.Audience) {
		return spiffeid.ID{}, fmt.Errorf("%w: not issued for audience %q", ErrRejected, r.cfg.Audience)
	}
	return r.identity(st.User.Username)
}

// identity maps "system:serviceaccount:NS:SA" to spiffe://TD/ns/NS/sa/SA.
func (r *Reviewer) identity(username string) (spiffeid.ID, error) {
	rest, ok := strings.CutPrefix(username, serviceAccountPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return spiffeid.ID{}, fmt.Errorf("%w: %q is not a service account", ErrRejected, username)
	}
	id, err := spiffeid.FromSegments(r.cfg.TrustDomain, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: service account %s/%s: %w", ErrRejected, ns, sa, err)
	}
	return id, nil
}
