// Package capture computes and installs the iptables rules that send a pod's TCP
// traffic through its Envoy sidecar, as Istio's istio-iptables does: inbound
// connections go to Envoy's virtual inbound listener, outbound ones to its virtual
// outbound listener, except the proxy's own traffic (its user or group), loopback
// traffic of the application, and excluded ports and address ranges.
//
// The rules live in the nat table, in chains named PALISADE_*:
//
//	PREROUTING -p tcp → PALISADE_INBOUND  → (excluded port: RETURN) → PALISADE_IN_REDIRECT → REDIRECT :15006
//	OUTPUT     -p tcp → PALISADE_OUTPUT   → (proxy, loopback, excluded: RETURN)  → PALISADE_REDIRECT    → REDIRECT :15001
//
// Script is a pure function from a Config to iptables-restore input; Apply runs it.
package capture

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/palisade-mesh/palisade/xds"
)

// Chain names. Every chain of this package starts with ChainPrefix, which is how
// Script recognises what an earlier run installed.
const (
	ChainPrefix     = "PALISADE_"
	chainInbound    = ChainPrefix + "INBOUND"     // PREROUTING jumps here
	chainInRedirect = ChainPrefix + "IN_REDIRECT" // to the inbound capture port
	chainOutput     = ChainPrefix + "OUTPUT"      // OUTPUT jumps here
	chainRedirect   = ChainPrefix + "REDIRECT"    // to the outbound capture port
)

// Family is an IP family, whose rules iptables (IPv4) or ip6tables (IPv6) holds.
type Family int

// The IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// commands are the iptables-save and iptables-restore programs of the family.
func (f Family) commands() (save, restore string) {
	if f == IPv6 {
		return "ip6tables-save", "ip6tables-restore"
	}
	return "iptables-save", "iptables-restore"
}

// loopback is the address that loopback traffic to the pod itself goes to.
func (f Family) loopback() string {
	if f == IPv6 {
		return "::1/128"
	}
	return "127.0.0.1/32"
}

// inboundPassthroughSource is the source address Envoy gives the connections it
// forwards to the application, so that they are not captured again. IPv6 uses
// Istio's ::6.
func (f Family) inboundPassthroughSource() string {
	if f == IPv6 {
		return "::6/128"
	}
	return xds.InboundPassthroughBindAddress + "/32"
}

func (f Family) contains(p netip.Prefix) bool { return p.Addr().Is4() == (f == IPv4) }

// Families are the IP families whose traffic a pod with these interface addresses
// needs captured: IPv4 always, IPv6 when the pod has an IPv6 address other than
// loopback and link-local ones (which every interface has, IPv6 network or not).
func Families(addrs []net.Addr) []Family {
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if ip = ip.Unmap(); ok && ip.Is6() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			return []Family{IPv4, IPv6}
		}
	}
	return []Family{IPv4}
}

// InboundPorts is the set of inbound TCP ports to capture: all of them, or those
// listed (none when the list is empty).
type InboundPorts struct {
	All   bool
	Ports []uint16
}

// Config says what to capture.
type Config struct {
	// ProxyUID and ProxyGID are the user and group of the proxy (and the agent),
	// whose own connections must not be captured.
	ProxyUID, ProxyGID uint32
	// InboundCapturePort is Envoy's virtual inbound listener (xds.VirtualInboundPort);
	// OutboundCapturePort its virtual outbound listener (xds.VirtualOutboundPort).
	InboundCapturePort, OutboundCapturePort uint16
	// IncludeInboundPorts are the inbound ports to capture.
	IncludeInboundPorts InboundPorts
	// ExcludeInboundPorts are never captured inbound, even when included.
	ExcludeInboundPorts []uint16
	// ExcludeOutboundPorts and ExcludeOutboundCIDRs are destinations whose
	// connections leave the pod directly.
	ExcludeOutboundPorts []uint16
	ExcludeOutboundCIDRs []netip.Prefix
}

// Validate reports a Config that would capture wrongly.
func (c Config) Validate() error {
	var errs []error
	// Root's traffic would escape capture: any process of the application running
	// as root could bypass the proxy.
	if c.ProxyUID == 0 {
		errs = append(errs, errors.New("the proxy user ID must not be 0 (root's traffic would not be captured)"))
	}
	if c.ProxyGID == 0 {
		errs = append(errs, errors.New("the proxy group ID must not be 0 (root's traffic would not be captured)"))
	}
	if c.InboundCapturePort == 0 || c.OutboundCapturePort == 0 {
		errs = append(errs, errors.New("the inbound and outbound capture ports must be set"))
	} else if c.InboundCapturePort == c.OutboundCapturePort {
		errs = append(errs, fmt.Errorf("the inbound and outbound capture ports must differ (both %d)", c.InboundCapturePort))
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("invalid excluded outbound CIDR %v", p))
		}
	}
	return errors.Join(errs...)
}

// Script returns the iptables-restore input, for iptables-restore --noflush, that
// makes the nat table of family f capture traffic as c says. installed is the nat
// table as iptables-save -t nat prints it now: what an earlier run installed (jumps
// to PALISADE_* chains, and those chains) is replaced in the same transaction, so
// that running the capture again, after a restart of the init container, leaves
// exactly one copy of the rules. Call Validate first.
//
// Rules are written as iptables-save prints them back, so that they can be found
// verbatim in its output.
func (c Config) Script(f Family, installed string) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# palisade-agent capture: %s", f)
	line("*nat")
	ours := []string{chainInbound, chainInRedirect, chainOutput, chainRedirect}
	stale, staleJumps := installedState(installed)
	var obsolete []string
	for _, ch := range stale {
		if !slices.Contains(ours, ch) {
			obsolete = append(obsolete, ch)
		}
	}
	// Declaring a chain creates it, or flushes it when it exists.
	for _, ch := range append(ours, obsolete...) {
		line(":%s - [0:0]", ch)
	}
	for _, rule := range staleJumps {
		line("-D %s", rule)
	}
	for _, ch := range obsolete {
		line("-X %s", ch)
	}

	line("-A %s -p tcp -j REDIRECT --to-ports %d", chainInRedirect, c.InboundCapturePort)
	line("-A %s -p tcp -j REDIRECT --to-ports %d", chainRedirect, c.OutboundCapturePort)

	// Inbound: connections arriving at the pod.
	included := c.IncludeInboundPorts
	if included.All || len(included.Ports) > 0 {
		line("-A PREROUTING -p tcp -j %s", chainInbound)
	}
	if included.All {
		for _, p := range c.ExcludeInboundPorts {
			line("-A %s -p tcp -m tcp --dport %d -j RETURN", chainInbound, p)
		}
		line("-A %s -p tcp -j %s", chainInbound, chainInRedirect)
	} else {
		for _, p := range included.Ports {
			if !slices.Contains(c.ExcludeInboundPorts, p) {
				line("-A %s -p tcp -m tcp --dport %d -j %s", chainInbound, p, chainInRedirect)
			}
		}
	}

	// Outbound: connections the pod's processes open.
	line("-A OUTPUT -p tcp -j %s", chainOutput)
	for _, p := range c.ExcludeOutboundPorts {
		line("-A %s -p tcp -m tcp --dport %d -j RETURN", chainOutput, p)
	}
	// Envoy forwarding an inbound connection to the application.
	line("-A %s -s %s -o lo -j RETURN", chainOutput, f.inboundPassthroughSource())
	for _, owner := range []string{fmt.Sprintf("--uid-owner %d", c.ProxyUID), fmt.Sprintf("--gid-owner %d", c.ProxyGID)} {
		// The proxy calling its own pod's address (an outbound route that leads
		// back to this pod) goes through the inbound listener, so that the
		// pod's inbound policy applies to it as to any other caller.
		line("-A %s ! -d %s -o lo -m owner %s -j %s", chainOutput, f.loopback(), owner, chainInRedirect)
		// The application talking to itself over loopback is not the mesh's.
		line("-A %s -o lo -m owner ! %s -j RETURN", chainOutput, owner)
		// The proxy's and the agent's own connections (to upstreams, palisaded).
		line("-A %s -m owner %s -j RETURN", chainOutput, owner)
	}
	line("-A %s -d %s -j RETURN", chainOutput, f.loopback())
	for _, p := range c.ExcludeOutboundCIDRs {
		if f.contains(p) {
			line("-A %s -d %s -j RETURN", chainOutput, p)
		}
	}
	line("-A %s -j %s", chainOutput, chainRedirect)
	line("COMMIT")
	return b.String()
}

// installedState finds, in iptables-save output of the nat table, the PALISADE_*
// chains and the rules of other chains that jump to them.
func installedState(saved string) (chains, jumps []string) {
	sc := bufio.NewScanner(strings.NewReader(saved))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if name, ok := strings.CutPrefix(l, ":"+ChainPrefix); ok {
			chains = append(chains, ChainPrefix+strings.Fields(name)[0])
			continue
		}
		rule, ok := strings.CutPrefix(l, "-A ")
		if !ok || strings.HasPrefix(rule, ChainPrefix) {
			continue
		}
		if strings.Contains(rule, " -j "+ChainPrefix) || strings.Contains(rule, " -g "+ChainPrefix) {
			jumps = append(jumps, rule)
		}
	}
	return chains, jumps
}

// ParsePorts parses a comma-separated list of TCP ports ("" is none). Repeated
// ports count once: lists are often joined from several sources.
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, field := range strings.Split(s, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		n, err := strconv.ParseUint(field, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q is not a port number", field)
		}
		if n == 0 || n > 65535 {
			return nil, fmt.Errorf("port %d is out of range 1-65535", n)
		}
		if !slices.Contains(out, uint16(n)) {
			out = append(out, uint16(n))
		}
	}
	return out, nil
}

// ParseInboundPorts parses the inbound ports to capture: "*" for all, else a list
// as ParsePorts reads it.
func ParseInboundPorts(s string) (InboundPorts, error) {
	if strings.TrimSpace(s) == "*" {
		return InboundPorts{All: true}, nil
	}
	ports, err := ParsePorts(s)
	return InboundPorts{Ports: ports}, err
}

// ParseCIDRs parses a comma-separated list of IPv4 and IPv6 CIDRs ("" is none).
// Host bits are cleared: 10.1.2.3/8 is 10.0.0.0/8.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, field := range strings.Split(s, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		p, err := netip.ParsePrefix(field)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8 or fd00::/8: %w", field, err)
		}
		if p = p.Masked(); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}
