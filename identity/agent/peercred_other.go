//go:build !linux

package agent

import (
	"errors"
	"net"
)

// callerOf is only implemented on Linux, where palisade-agent runs.
func callerOf(net.Conn) (Caller, error) {
	return Caller{}, errors.New("peercred: SO_PEERCRED is only supported on Linux")
}
