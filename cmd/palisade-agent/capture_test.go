package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func runCaptureForTest(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	addrs := func() ([]net.Addr, error) { return nil, nil }
	code = runCapture(t.Context(), args, addrs, &out, &errOut)
	return code, out.String(), errOut.String()
}

func goldens(t *testing.T, names ...string) string {
	t.Helper()
	var all string
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join("internal", "capture", "testdata", n+".golden"))
		if err != nil {
			t.Fatal(err)
		}
		all += string(b)
	}
	return all
}

// The flags reach the rules: the defaults give the reviewed default rule set, and
// flags as the injector passes them give the rules of the same settings.
func TestCaptureDryRun(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "defaults", args: nil, want: goldens(t, "defaults.ipv4", "defaults.ipv6")},
		{
			name: "exclusions",
			args: []string{"--proxy-uid=2000", "--proxy-gid=3000", "--inbound-capture-port=16006", "--outbound-capture-port=16001",
				"--exclude-inbound-ports=22", "--exclude-outbound-ports=5432,3306",
				"--exclude-outbound-cidrs=10.0.0.0/8, fd00::/8,169.254.169.254/32"},
			want: goldens(t, "exclusions.ipv4", "exclusions.ipv6"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCaptureForTest(t, append(tt.args, "--dry-run")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if diff := cmp.Diff(tt.want, out); diff != "" {
				t.Errorf("rules (-want +got):\n%s", diff)
			}
		})
	}
}

// Without --proxy-gid, the proxy's group is its user ID, not Istio's 1337: a
// changed --proxy-uid must not leave group 1337 uncaptured.
func TestCaptureProxyGIDFollowsUID(t *testing.T) {
	_, out, _ := runCaptureForTest(t, "--dry-run", "--proxy-uid=2000")
	if !strings.Contains(out, "-m owner --gid-owner 2000 -j RETURN") || strings.Contains(out, "1337") {
		t.Errorf("rules for --proxy-uid=2000:\n%s", out)
	}
}

func TestCaptureRejectsBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--exclude-inbound-ports=15020,70000"}, "--exclude-inbound-ports: port 70000 is out of range 1-65535"},
		{[]string{"--exclude-outbound-ports=http"}, `--exclude-outbound-ports: "http" is not a port number`},
		{[]string{"--include-inbound-ports=80,*"}, `--include-inbound-ports: "*" is not a port number`},
		{[]string{"--exclude-outbound-cidrs=10.0.0.0/8,10.0.0/8"}, `--exclude-outbound-cidrs: "10.0.0/8" is not a CIDR`},
		{[]string{"--exclude-outbound-cidrs=10.0.0.1"}, `--exclude-outbound-cidrs: "10.0.0.1" is not a CIDR`},
		{[]string{"--inbound-capture-port=0"}, "--inbound-capture-port 0 is out of range 1-65535"},
		{[]string{"--outbound-capture-port=65536"}, "--outbound-capture-port 65536 is out of range 1-65535"},
		{[]string{"--outbound-capture-port=15006"}, "capture ports must differ"},
		{[]string{"--proxy-uid=0"}, "proxy user ID must not be 0"},
		{[]string{"--proxy-gid=0"}, "proxy group ID must not be 0"},
		{[]string{"--proxy-gid=-2"}, "--proxy-gid -2 is not a valid ID"},
		{[]string{"--proxy-uid=4294967295"}, "--proxy-uid 4294967295 is not a valid ID"},
		{[]string{"--proxy-uid=-1"}, "invalid value"},
		{[]string{"iptables"}, `unexpected argument "iptables"`},
	}
	for _, tt := range tests {
		code, out, errOut := runCaptureForTest(t, append(tt.args, "--dry-run")...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tt.args, code, errOut, tt.want)
		}
		if out != "" {
			t.Errorf("%v: printed rules despite the error:\n%s", tt.args, out)
		}
	}
}

// Without iptables the capture fails, saying what is missing, rather than letting
// the pod start uncaptured.
func TestCaptureNeedsIptables(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	code, _, errOut := runCaptureForTest(t)
	if code != 1 || !strings.Contains(errOut, "iptables-save is needed (install iptables)") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestCaptureHelp(t *testing.T) {
	code, _, errOut := runCaptureForTest(t, "-h")
	for _, want := range []string{"Usage: palisade-agent capture", "-exclude-outbound-cidrs", "-dry-run", "PALISADE_"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("help lacks %q:\n%s", want, errOut)
		}
	}
	if code != 0 {
		t.Errorf("-h: exit %d", code)
	}
}
