package caserver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/palisade-mesh/palisade/identity"
	"github.com/palisade-mesh/palisade/identity/kubetoken"
)

// errUnauthenticated marks a caller that presented neither a valid token nor a
// valid SVID.
var errUnauthenticated = errors.New("unauthenticated")

// toStatus is the one place where the CA's errors become gRPC codes. The message
// keeps the wrapped detail, which never holds a key or a token.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, identity.ErrInvalidCSR):
		code = codes.InvalidArgument
	case errors.Is(err, identity.ErrIdentityMismatch):
		code = codes.PermissionDenied
	case errors.Is(err, errUnauthenticated),
		errors.Is(err, identity.ErrTokenUnknown),
		errors.Is(err, identity.ErrTokenUsed),
		errors.Is(err, identity.ErrTokenExpired),
		errors.Is(err, kubetoken.ErrRejected):
		code = codes.Unauthenticated
	case errors.Is(err, errInvalidRequest), errors.Is(err, identity.ErrInvalidTTL):
		code = codes.InvalidArgument
	}
	return status.Error(code, err.Error())
}
