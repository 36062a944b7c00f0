package caserver

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// bundleSource hands out the CA's current bundle to go-spiffe's federation handler.
type bundleSource struct{ ca Authority }

func (s bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != s.ca.TrustDomain() {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return s.ca.Bundle(), nil
}

// ServeBundleEndpoint serves this trust domain's bundle at a SPIFFE bundle endpoint
// (https_spiffe profile: the endpoint presents palisaded's SVID, ServerID) on l,
// until the server is closed by the caller.
func (s *Server) ServeBundleEndpoint(l net.Listener) (*http.Server, error) {
	h, err := federation.NewHandler(s.cfg.CA.TrustDomain(), bundleSource{s.cfg.CA})
	if err != nil {
		return nil, err
	}
	tlsConf := s.TLSConfig()
	tlsConf.ClientAuth = 0 // federation peers do not present certificates
	srv := &http.Server{Handler: h, TLSConfig: tlsConf, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("bundle endpoint", "err", err)
		}
	}()
	s.log.Info("SPIFFE bundle endpoint serving", "url", "https://"+l.Addr().String(), "endpointSPIFFEID", ServerID(s.cfg.CA.TrustDomain()).String())
	return srv, nil
}
