package caserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TokenCreator makes single-use bootstrap tokens.
type TokenCreator interface {
	Create(id spiffeid.ID, ttl time.Duration) (string, time.Time, error)
}

// CreateTokenRequest is the body of POST /v1/identity/tokens on the admin socket.
type CreateTokenRequest struct {
	SPIFFEID string `json:"spiffeID"`
	// TTL in Go duration syntax ("10m"); how long the token may be used.
	TTL string `json:"ttl"`
}

// CreateTokenResponse carries the token. It is shown once: palisaded keeps only
// its hash.
type CreateTokenResponse struct {
	Token     string    `json:"token"`
	SPIFFEID  string    `json:"spiffeID"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// AdminHandler serves the admin API. It must only be reachable by the operator:
// palisaded serves it on a Unix socket of mode 0600.
func AdminHandler(td spiffeid.TrustDomain, tokens TokenCreator) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/identity/tokens", func(w http.ResponseWriter, r *http.Request) {
		var req CreateTokenRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, "bad request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		id, err := WorkloadID(td, req.SPIFFEID)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ttl, err := time.ParseDuration(req.TTL)
		if err != nil {
			http.Error(w, fmt.Sprintf("ttl %q: %v", req.TTL, err), http.StatusBadRequest)
			return
		}
		token, exp, err := tokens.Create(id, ttl)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(CreateTokenResponse{Token: token, SPIFFEID: id.String(), ExpiresAt: exp})
	})
	return mux
}

// CreateToken asks palisaded's admin API, on the Unix socket at path, for a
// bootstrap token. A refusal is an error carrying palisaded's message.
func CreateToken(ctx context.Context, socket string, req CreateTokenRequest) (CreateTokenResponse, error) {
	var out CreateTokenResponse
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	body, err := json.Marshal(req)
	if err != nil {
		return out, err
	}
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://palisaded/v1/identity/tokens", bytes.NewReader(body))
	if err != nil {
		return out, err
	}
	httpReq.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(httpReq)
	if err != nil {
		return out, fmt.Errorf("palisaded admin socket %s: %w", socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return out, fmt.Errorf("palisaded answer: %w", err)
	}
	if resp.StatusCode != http.StatusCreated {
		return out, fmt.Errorf("palisaded refused: %s", strings.TrimSpace(string(data)))
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("palisaded answer: %w", err)
	}
	return out, nil
}

// WorkloadID parses a workload identity of this trust domain, which must have the
// form spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT.
func WorkloadID(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID %q: %w", s, err)
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID %q is not in trust domain %q", s, td)
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return spiffeid.ID{}, errors.New("SPIFFE ID " + s + " must have the form spiffe://" + td.Name() + "/ns/NAMESPACE/sa/SERVICE_ACCOUNT")
	}
	return id, nil
}
