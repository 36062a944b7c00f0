package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

// The helper process: the test binary re-executed under another Unix user
// (the os/exec helper-process pattern) to be a real, different peer.
const (
	helperEnv       = "PALISADE_AGENT_TEST_HELPER" // "fetch" or "dial"
	helperSocketEnv = "PALISADE_AGENT_TEST_SOCKET"
	nobody          = 65534
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode, os.Getenv(helperSocketEnv)))
	}
	os.Exit(m.Run())
}

// helperMain prints one line: "id <spiffe id>", "code <grpc code>" or
// "dial-error <errno>".
func helperMain(mode, path string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch mode {
	case "dial":
		c, err := net.Dial("unix", path)
		if err != nil {
			var errno syscall.Errno
			if errors.As(err, &errno) {
				fmt.Printf("dial-error %s\n", errnoName(errno))
			} else {
				fmt.Printf("dial-error %v\n", err)
			}
			return 0
		}
		c.Close()
		fmt.Println("dial-ok")
		return 0
	case "fetch":
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+path))
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		defer c.Close()
		svid, err := c.FetchX509SVID(ctx)
		if err != nil {
			fmt.Printf("code %s\n", status.Code(err))
			return 0
		}
		fmt.Printf("id %s uid=%d\n", svid.ID, os.Getuid())
		return 0
	}
	return 2
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EACCES:
		return "EACCES"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	}
	return e.Error()
}

// runAsNobody runs the helper as uid/gid 65534 and returns its output line.
func runAsNobody(t *testing.T, mode, socket string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	// The go test binary lives in a 0700 build directory: copy it somewhere
	// the other user can execute it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binDir := shortTempDir(t)
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "helper.test")
	copyFile(t, self, bin, 0o755)

	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperSocketEnv+"="+socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func intp(v int) *int { return &v }

// Two real Unix users on one socket get different identities from SO_PEERCRED.
func TestByUnixUserRealProcesses(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	rules := []UnixRule{{UID: intp(0), ID: idA}, {UID: intp(nobody), ID: idB}}
	h := startHarness(t, withAttestor(ByUnixUser(rules)), withSocket(0o666, 0))
	h.store.SetSVID(h.ca.issue(t, idB))
	if err := os.Chmod(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}

	if got, want := runAsNobody(t, "fetch", h.path), "id "+idB.String()+" uid=65534"; got != want {
		t.Fatalf("child: %q, want %q", got, want)
	}
	ctx := testCtx(t)
	svid, err := h.client(ctx).FetchX509SVID(ctx)
	if err != nil || svid.ID != idA {
		t.Fatalf("test process: %v %v", svid, err)
	}
}

func TestByUnixUserNoRuleDenied(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	h := startHarness(t, withAttestor(ByUnixUser([]UnixRule{{UID: intp(0), ID: idA}})), withSocket(0o666, 0))
	if err := os.Chmod(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := runAsNobody(t, "fetch", h.path); got != "code PermissionDenied" {
		t.Fatalf("child: %q, want PermissionDenied", got)
	}
}

// The default socket mode keeps other users out at connect(2) already.
func TestSocketModeDefault(t *testing.T) {
	h := startHarness(t)
	fi, err := os.Lstat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want socket 0600", fi.Mode())
	}
	if os.Getuid() != 0 {
		return
	}
	if err := os.Chmod(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := runAsNobody(t, "dial", h.path); got != "dial-error EACCES" {
		t.Fatalf("other user connecting to a 0600 socket: %q", got)
	}
}

func TestSocketModeAndGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown needs root")
	}
	h := startHarness(t, withSocket(0o660, nobody))
	fi, err := os.Lstat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Gid != nobody {
		t.Fatalf("mode %v gid %d", fi.Mode(), st.Gid)
	}
	// uid 65534 is in group 65534, so it may connect.
	if err := os.Chmod(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := runAsNobody(t, "dial", h.path); got != "dial-ok" {
		t.Fatalf("group member: %q", got)
	}
}

func TestUnixRuleMatching(t *testing.T) {
	rules := []UnixRule{
		{UID: intp(1000), ID: idA},
		{GID: intp(50), ID: idB},
		{UID: intp(1000), GID: intp(50), ID: idA}, // duplicate identity
		{UID: intp(2000), GID: intp(60), ID: idB},
	}
	a := ByUnixUser(rules)
	for _, tc := range []struct {
		c    Caller
		want []spiffeid.ID
	}{
		{Caller{UID: 1000, GID: 1}, []spiffeid.ID{idA}},
		{Caller{UID: 1000, GID: 50}, []spiffeid.ID{idA, idB}},
		{Caller{UID: 7, GID: 50}, []spiffeid.ID{idB}},
		{Caller{UID: 2000, GID: 61}, nil},
		{Caller{UID: 2000, GID: 60}, []spiffeid.ID{idB}},
	} {
		got, err := a.Identities(tc.c)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%v: got %v, want %v", tc.c, got, tc.want)
		}
	}
	if ids, _ := AllowAll(idA).Identities(Caller{UID: 12345}); len(ids) != 1 || ids[0] != idA {
		t.Fatal(ids)
	}
}
