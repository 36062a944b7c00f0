package agent

import (
	"net"

	"golang.org/x/sys/unix"
)

// callerOf reads SO_PEERCRED. The values are those of the connecting process at
// connect(2) time; they cannot be forged by the peer.
func callerOf(conn net.Conn) (Caller, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Caller{}, errNotUnix
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if credErr != nil {
		return Caller{}, credErr
	}
	return Caller{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}, nil
}
