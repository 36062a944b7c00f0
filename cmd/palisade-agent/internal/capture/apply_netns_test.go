package capture_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/palisade-mesh/palisade/cmd/palisade-agent/internal/capture"
)

// inNamespaceEnv marks the run of a test inside the network namespace it made.
const inNamespaceEnv = "PALISADE_CAPTURE_TEST_IN_NETNS"

// The pod's and its peer's addresses, on a veth pair between two network
// namespaces that the test creates.
const (
	podAddr      = "10.77.0.1"
	peerAddr     = "10.77.0.2"
	peerExcluded = "10.77.0.200" // in the excluded range below
	proxyUID     = 1337
)

// testConfig is what the test installs: the defaults plus outbound exclusions.
var testConfig = func() capture.Config {
	c := defaults
	c.ExcludeOutboundPorts = []uint16{5432}
	c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.77.0.128/25"), netip.MustParsePrefix("fd77::/64")}
	return c
}()

// TestApplyInNetworkNamespace installs the rules with the real iptables-restore in
// a network namespace of its own, checks with iptables-save that exactly the
// generated rules are there after a second run, and sends connections through
// them: from the pod (as the application and as the proxy user) and from a peer
// namespace to the pod, each answered by the listener it must reach.
func TestApplyInNetworkNamespace(t *testing.T) {
	if os.Getenv(inNamespaceEnv) == "" {
		runInNetworkNamespace(t)
		return
	}
	ctx := t.Context()
	peer := setUpPeer(t)

	// Someone else's rule, which must stay.
	restore(t, "iptables-restore", "*nat\n:OTHER - [0:0]\n-A OTHER -j RETURN\n-A POSTROUTING -p udp -j OTHER\nCOMMIT\n")
	// A first run with other settings, then the one under test.
	first := defaults
	first.ExcludeOutboundPorts = []uint16{9999}
	if err := capture.Apply(ctx, first, capture.IPv4, capture.IPv6); err != nil {
		t.Fatal(err)
	}
	if err := capture.Apply(ctx, testConfig, capture.IPv4, capture.IPv6); err != nil {
		t.Fatal(err)
	}
	for _, f := range []capture.Family{capture.IPv4, capture.IPv6} {
		save := "iptables-save"
		if f == capture.IPv6 {
			save = "ip6tables-save"
		}
		saved := output(t, save, "-t", "nat")
		want := palisadeRules(testConfig.Script(f, ""))
		if diff := cmp.Diff(want, palisadeRules(saved)); diff != "" {
			t.Errorf("%s: installed rules differ from the script (-want +got):\n%s\n%s", f, diff, saved)
		}
		if f == capture.IPv4 && !strings.Contains(saved, "-A POSTROUTING -p udp -j OTHER") {
			t.Errorf("another program's rule was removed:\n%s", saved)
		}
	}

	for _, l := range []struct{ name, addr string }{
		{"outbound-capture", ":15001"}, {"inbound-capture", ":15006"}, {"app", ":8080"}, {"monitoring", ":15020"},
	} {
		serveName(t, "", l.name, l.addr)
	}
	serveName(t, peer, "peer", ":80")
	serveName(t, peer, "peer", ":5432")

	app := dialer{}
	proxy := dialer{fsuid: proxyUID}
	passthrough := dialer{fsuid: proxyUID, source: "127.0.0.6"}
	fromPeer := dialer{netns: peer}
	tests := []struct {
		name string
		from dialer
		to   string
		want string // the listener that answers
	}{
		{"app to a peer: captured", app, peerAddr + ":80", "outbound-capture"},
		{"app to an excluded port", app, peerAddr + ":5432", "peer"},
		{"app to an excluded CIDR", app, peerExcluded + ":80", "peer"},
		{"proxy to a peer: not captured", proxy, peerAddr + ":80", "peer"},
		{"app to itself over 127.0.0.1", app, "127.0.0.1:8080", "app"},
		{"app to its own pod address", app, podAddr + ":8080", "app"},
		{"proxy to its own pod: the inbound listener", proxy, podAddr + ":8080", "inbound-capture"},
		{"proxy forwarding inbound from 127.0.0.6", passthrough, podAddr + ":8080", "app"},
		{"peer to the pod: captured", fromPeer, podAddr + ":8080", "inbound-capture"},
		{"peer to an excluded inbound port", fromPeer, podAddr + ":15020", "monitoring"},
	}
	for _, tt := range tests {
		got, err := tt.from.ask(tt.to)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
		} else if got != tt.want {
			t.Errorf("%s: %s answered, want %s", tt.name, got, tt.want)
		}
	}
}

// runInNetworkNamespace runs the calling test again, alone, in a new network
// namespace, and reports its result.
func runInNetworkNamespace(t *testing.T) {
	// Every machine of the project (developers' and CI's) runs tests as root.
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root, to create a network namespace (unshare -n)")
	}
	// A missing program fails rather than skips, so that a machine without
	// iptables cannot pass this test without running it: the project's test
	// scripts must install the Debian package iptables (iproute2 and util-linux
	// come with the image).
	for _, tool := range []string{"unshare", "nsenter", "ip", "sleep", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed; this test applies the rules with the real iptables in a network namespace: apt-get install iptables iproute2 util-linux (%v)", tool, err)
		}
	}
	cmd := exec.Command("unshare", "-n", "--", os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), inNamespaceEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in a network namespace: %v\n%s", err, out)
	}
}

// setUpPeer makes a second network namespace joined to this one by a veth pair,
// podAddr here and peerAddr, peerExcluded there, and returns its path. Both
// disappear with the processes that hold them.
func setUpPeer(t *testing.T) string {
	sh(t, "ip link set lo up")
	holder := exec.Command("unshare", "-n", "sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	path := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)
	own, _ := os.Readlink("/proc/self/ns/net")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if ns, err := os.Readlink(path); err == nil && ns != own {
			break // unshare has made the namespace
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer network namespace did not appear")
		}
	}
	pid := strconv.Itoa(holder.Process.Pid)
	sh(t, "ip link add v0 type veth peer name v1 netns "+pid+
		" && ip addr add "+podAddr+"/24 dev v0 && ip link set v0 up")
	sh(t, "nsenter -t "+pid+" -n sh -c 'ip link set lo up && ip addr add "+peerAddr+"/24 dev v1 && ip addr add "+
		peerExcluded+"/24 dev v1 && ip link set v1 up'")
	return path
}

// palisadeRules are the rules of iptables-restore input or iptables-save output
// that are Palisade's (in its chains, or jumping to them), by chain, in order.
func palisadeRules(text string) map[string][]string {
	out := map[string][]string{}
	for _, l := range strings.Split(text, "\n") {
		fields := strings.Fields(l)
		if len(fields) < 2 || fields[0] != "-A" {
			continue
		}
		if strings.HasPrefix(fields[1], capture.ChainPrefix) || strings.Contains(l, "-j "+capture.ChainPrefix) {
			out[fields[1]] = append(out[fields[1]], l)
		}
	}
	return out
}

// serveName listens on addr in the network namespace netns ("" for this one)
// and answers every connection with name.
func serveName(t *testing.T, netns, name, addr string) {
	var l net.Listener
	err := inNamespace(netns, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s for %s: %v", addr, name, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name)
			c.Close()
		}
	}()
}

// dialer opens connections as a process of the pod (or the peer) would.
type dialer struct {
	netns  string // network namespace; "" for this one
	fsuid  int    // file-system user of the socket, which iptables' owner match sees
	source string // local address to bind; "" for the kernel's choice
}

// ask connects to addr and returns the name the answering listener sends.
func (d dialer) ask(addr string) (string, error) {
	var c net.Conn
	err := inNamespace(d.netns, func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		// Setfsuid changes this thread only; the socket keeps the credentials
		// it was created with.
		prev, _ := unix.SetfsuidRetUid(d.fsuid)
		defer unix.SetfsuidRetUid(prev)
		nd := net.Dialer{Timeout: 3 * time.Second}
		if d.source != "" {
			nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(d.source)}
		}
		var err error
		c, err = nd.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// inNamespace runs fn on a thread in the network namespace at path ("" for this
// one); sockets fn creates stay in that namespace.
func inNamespace(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer own.Close()
	target, err := os.Open(path)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", path, err)
	}
	fnErr := fn()
	// A thread left in the other namespace must not run other goroutines: it
	// stays locked, and the runtime ends it with this goroutine.
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err == nil {
		runtime.UnlockOSThread()
	}
	return fnErr
}

func sh(t *testing.T, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out)
}

func restore(t *testing.T, name, input string) {
	t.Helper()
	cmd := exec.Command(name, "--noflush", "-w")
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}
