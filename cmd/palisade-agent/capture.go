package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"

	"github.com/palisade-mesh/palisade/cmd/palisade-agent/internal/capture"
	"github.com/palisade-mesh/palisade/xds"
)

// defaultProxyUID is the user the agent and Envoy run as in an injected pod (Istio's).
const defaultProxyUID = 1337

// runCapture is `palisade-agent capture`, the init container of an injected pod:
// it installs the iptables rules that send the pod's TCP traffic through Envoy,
// and exits. It returns the exit status: 2 for bad flags, 1 for a failure.
func runCapture(ctx context.Context, args []string, interfaceAddrs func() ([]net.Addr, error), stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("palisade-agent capture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	proxyUID := fs.Uint("proxy-uid", defaultProxyUID, "user ID of the proxy and the agent, whose own connections are not captured")
	proxyGID := fs.Int("proxy-gid", -1, "group ID whose connections are not captured; -1: the same as --proxy-uid")
	inboundPort := fs.Uint("inbound-capture-port", xds.VirtualInboundPort, "Envoy's virtual inbound listener, where inbound connections are redirected")
	outboundPort := fs.Uint("outbound-capture-port", xds.VirtualOutboundPort, "Envoy's virtual outbound listener, where outbound connections are redirected")
	includeInbound := fs.String("include-inbound-ports", "*", `inbound ports to capture, comma separated; "*" for all, "" for none`)
	excludeInbound := fs.String("exclude-inbound-ports", "15000,15020", "inbound ports never captured, comma separated: by default Envoy's admin port and the agent's monitoring port")
	excludeOutbound := fs.String("exclude-outbound-ports", "", "destination ports whose outbound connections are not captured, comma separated")
	excludeCIDRs := fs.String("exclude-outbound-cidrs", "", "destination CIDRs (IPv4 and IPv6) whose outbound connections are not captured, comma separated")
	dryRun := fs.Bool("dry-run", false, "print the iptables-restore input for IPv4 and IPv6 instead of applying it")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: palisade-agent capture [flags]

Redirects the pod's TCP traffic to its Envoy sidecar, as Istio's istio-iptables
does: inbound connections to --inbound-capture-port, outbound connections to
--outbound-capture-port, except those of the proxy's user or group, the
application's own loopback traffic, and the excluded ports and ranges. It
installs the rules (chains PALISADE_* of the nat table) with iptables-restore,
and ip6tables-restore when the pod has an IPv6 address, found on PATH; running
it again replaces them. It needs CAP_NET_ADMIN and CAP_NET_RAW: run it as the
pod's init container.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "palisade-agent capture: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	c, err := captureConfig(*proxyUID, *proxyGID, *inboundPort, *outboundPort, *includeInbound, *excludeInbound, *excludeOutbound, *excludeCIDRs)
	if err != nil {
		fmt.Fprintf(stderr, "palisade-agent capture: %v\n", err)
		return 2
	}
	if *dryRun {
		for _, f := range []capture.Family{capture.IPv4, capture.IPv6} {
			fmt.Fprint(stdout, c.Script(f, ""))
		}
		return 0
	}
	addrs, err := interfaceAddrs()
	if err != nil {
		fmt.Fprintf(stderr, "palisade-agent capture: the pod's addresses: %v\n", err)
		return 1
	}
	families := capture.Families(addrs)
	if err := capture.Apply(ctx, c, families...); err != nil {
		fmt.Fprintf(stderr, "palisade-agent capture: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "palisade-agent capture: traffic capture installed for %v\n", families)
	return 0
}

// captureConfig checks the flags and turns them into a capture.Config; errors
// name the flag.
func captureConfig(uid uint, gid int, inboundPort, outboundPort uint, includeInbound, excludeInbound, excludeOutbound, excludeCIDRs string) (capture.Config, error) {
	var c capture.Config
	var errs []error
	id := func(flag string, v uint64) uint32 {
		if v > 1<<32-2 { // 2^32-1 is the kernel's "no ID"
			errs = append(errs, fmt.Errorf("--%s %d is not a valid ID", flag, v))
		}
		return uint32(v)
	}
	port := func(flag string, v uint) uint16 {
		if v == 0 || v > 65535 {
			errs = append(errs, fmt.Errorf("--%s %d is out of range 1-65535", flag, v))
		}
		return uint16(v)
	}
	c.ProxyUID = id("proxy-uid", uint64(uid))
	c.ProxyGID = c.ProxyUID
	if gid < -1 {
		errs = append(errs, fmt.Errorf("--proxy-gid %d is not a valid ID", gid))
	} else if gid != -1 {
		c.ProxyGID = id("proxy-gid", uint64(gid))
	}
	c.InboundCapturePort = port("inbound-capture-port", inboundPort)
	c.OutboundCapturePort = port("outbound-capture-port", outboundPort)
	var err error
	if c.IncludeInboundPorts, err = capture.ParseInboundPorts(includeInbound); err != nil {
		errs = append(errs, fmt.Errorf("--include-inbound-ports: %w", err))
	}
	if c.ExcludeInboundPorts, err = capture.ParsePorts(excludeInbound); err != nil {
		errs = append(errs, fmt.Errorf("--exclude-inbound-ports: %w", err))
	}
	if c.ExcludeOutboundPorts, err = capture.ParsePorts(excludeOutbound); err != nil {
		errs = append(errs, fmt.Errorf("--exclude-outbound-ports: %w", err))
	}
	if c.ExcludeOutboundCIDRs, err = capture.ParseCIDRs(excludeCIDRs); err != nil {
		errs = append(errs, fmt.Errorf("--exclude-outbound-cidrs: %w", err))
	}
	if len(errs) == 0 {
		errs = append(errs, c.Validate())
	}
	return c, errors.Join(errs...)
}
