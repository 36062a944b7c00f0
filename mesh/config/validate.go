package config

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh/config/policypb"
)

// Validate checks an object's spec against the rules Istio documents for its kind.
// Every problem is reported, each prefixed with the path of the offending field.
func Validate(obj Object) error {
	var v validator
	switch s := obj.Spec.(type) {
	case *networking.ServiceEntry:
		v.serviceEntry(s)
	case *networking.WorkloadEntry:
		v.workloadEntry("spec", s, false)
	case *networking.VirtualService:
		v.virtualService(s)
	case *networking.DestinationRule:
		v.destinationRule(s)
	case *security.PeerAuthentication:
		v.peerAuthentication(s)
	case *security.AuthorizationPolicy:
		v.authorizationPolicy(s)
	case *security.RequestAuthentication:
		v.requestAuthentication(s)
	case *policypb.RegoPolicy:
		v.regoPolicy(s)
	default:
		return fmt.Errorf("unsupported spec type %T", obj.Spec)
	}
	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

// sortedKeys returns a map's keys in order, so that problems are reported in the
// same order every time the same document is read.
func sortedKeys[M ~map[string]V, V any](m M) []string {
	return slices.Sorted(maps.Keys(m))
}

func (v *validator) errorf(field, format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// dns1123Subdomain matches a Kubernetes object name: dot-separated DNS labels.
var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func validateObjectName(name, namespace string) error {
	if name == "" {
		return errors.New("metadata.name is required")
	}
	if len(name) > 253 || !dns1123Subdomain.MatchString(name) {
		return fmt.Errorf("metadata.name %q is not a valid name (lowercase letters, digits, '-' and '.')", name)
	}
	if len(namespace) > 63 || !dns1123Subdomain.MatchString(namespace) || strings.Contains(namespace, ".") {
		return fmt.Errorf("metadata.namespace %q is not a valid namespace name", namespace)
	}
	return nil
}

// host validates a service host name: a DNS name, optionally with a leading "*."
// wildcard, or "*" alone where allowed.
func (v *validator) host(field, h string) {
	if h == "" {
		v.errorf(field, "host is required")
		return
	}
	if h == "*" {
		return
	}
	name := strings.TrimPrefix(h, "*.")
	if len(name) > 253 || !dns1123Subdomain.MatchString(strings.ToLower(name)) {
		v.errorf(field, "%q is not a valid host name", h)
	}
}

// ParseAddress reads a ServiceEntry address, an IP address or a CIDR, as the prefix
// it covers (an IP address covers itself alone).
func ParseAddress(a string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(a); err == nil {
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(a)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", a)
	}
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

func (v *validator) port(field string, n uint32) {
	if n == 0 || n > 65535 {
		v.errorf(field, "port %d is out of range 1-65535", n)
	}
}

// Protocols Istio knows for service ports (case-insensitive).
var knownProtocols = map[string]bool{
	"HTTP": true, "HTTPS": true, "HTTP2": true, "GRPC": true, "GRPC-WEB": true, "TCP": true,
	"TLS": true, "MONGO": true, "REDIS": true, "MYSQL": true, "UDP": true,
}

func (v *validator) serviceEntry(s *networking.ServiceEntry) {
	if len(s.Hosts) == 0 {
		v.errorf("spec.hosts", "at least one host is required")
	}
	for i, h := range s.Hosts {
		if h == "*" {
			v.errorf(fmt.Sprintf("spec.hosts[%d]", i), "wildcard host * is not allowed in a ServiceEntry")
			continue
		}
		v.host(fmt.Sprintf("spec.hosts[%d]", i), h)
	}
	for i, a := range s.Addresses {
		if _, err := ParseAddress(a); err != nil {
			v.errorf(fmt.Sprintf("spec.addresses[%d]", i), "%v", err)
		}
	}
	if len(s.Ports) == 0 {
		v.errorf("spec.ports", "at least one port is required")
	}
	names, numbers := map[string]bool{}, map[uint32]bool{}
	for i, p := range s.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if p == nil {
			v.errorf(f, "port is empty")
			continue
		}
		v.port(f+".number", p.Number)
		if p.TargetPort != 0 {
			v.port(f+".targetPort", p.TargetPort)
		}
		if p.Name == "" {
			v.errorf(f+".name", "port name is required")
		} else if names[p.Name] {
			v.errorf(f+".name", "duplicate port name %q", p.Name)
		}
		if numbers[p.Number] {
			v.errorf(f+".number", "duplicate port number %d", p.Number)
		}
		names[p.Name], numbers[p.Number] = true, true
		if p.Protocol != "" && !knownProtocols[strings.ToUpper(p.Protocol)] {
			v.errorf(f+".protocol", "unknown protocol %q", p.Protocol)
		}
	}
	if s.WorkloadSelector != nil && len(s.Endpoints) > 0 {
		v.errorf("spec.workloadSelector", "only one of endpoints and workloadSelector may be set")
	}
	if s.WorkloadSelector != nil && len(s.WorkloadSelector.Labels) == 0 {
		v.errorf("spec.workloadSelector.labels", "a workload selector needs at least one label")
	}
	for i, ep := range s.Endpoints {
		f := fmt.Sprintf("spec.endpoints[%d]", i)
		if ep == nil {
			v.errorf(f, "endpoint is empty")
			continue
		}
		v.workloadEntry(f, ep, s.Resolution == networking.ServiceEntry_STATIC)
		for _, name := range sortedKeys(ep.Ports) {
			if !names[name] {
				v.errorf(f+".ports", "port name %q is not one of the service's ports", name)
			}
		}
	}
	if s.Resolution == networking.ServiceEntry_NONE && len(s.Endpoints) > 0 {
		v.errorf("spec.resolution", "endpoints need resolution STATIC or DNS")
	}
	v.exportTo("spec.exportTo", s.ExportTo)
}

func (v *validator) workloadEntry(f string, w *networking.WorkloadEntry, needIP bool) {
	switch {
	case w.Address == "":
		v.errorf(f+".address", "address is required")
	case strings.HasPrefix(w.Address, "unix://"):
		v.errorf(f+".address", "unix domain socket endpoints are not supported")
	default:
		if _, err := netip.ParseAddr(w.Address); err != nil {
			if needIP {
				v.errorf(f+".address", "%q is not an IP address (resolution STATIC)", w.Address)
			} else if !dns1123Subdomain.MatchString(strings.ToLower(w.Address)) {
				v.errorf(f+".address", "%q is neither an IP address nor a host name", w.Address)
			}
		}
	}
	for _, name := range sortedKeys(w.Ports) {
		v.port(fmt.Sprintf("%s.ports[%s]", f, name), w.Ports[name])
	}
	if w.Locality != "" && strings.Count(w.Locality, "/") > 2 {
		v.errorf(f+".locality", "%q has more than region/zone/subzone", w.Locality)
	}
}

func (v *validator) exportTo(f string, exportTo []string) {
	for i, e := range exportTo {
		switch e {
		case "*", ".", "~":
			if len(exportTo) > 1 && e != "." {
				v.errorf(fmt.Sprintf("%s[%d]", f, i), "%q cannot be combined with other values", e)
			}
		default:
			if !dns1123Subdomain.MatchString(e) || strings.Contains(e, ".") {
				v.errorf(fmt.Sprintf("%s[%d]", f, i), "%q is not a namespace name, '.', '*' or '~'", e)
			}
		}
	}
}

func (v *validator) duration(f string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		v.errorf(f, "%v", err)
		return
	}
	if d.AsDuration().Milliseconds() < 1 {
		v.errorf(f, "duration must be at least 1ms")
	}
}

func (v *validator) virtualService(s *networking.VirtualService) {
	if len(s.Hosts) == 0 {
		v.errorf("spec.hosts", "at least one host is required")
	}
	for i, h := range s.Hosts {
		v.host(fmt.Sprintf("spec.hosts[%d]", i), h)
	}
	if len(s.Http) == 0 && len(s.Tcp) == 0 && len(s.Tls) == 0 {
		v.errorf("spec", "at least one of http, tcp or tls routes is required")
	}
	for i, r := range s.Http {
		f := fmt.Sprintf("spec.http[%d]", i)
		if r == nil {
			v.errorf(f, "route is empty")
			continue
		}
		v.httpRoute(f, r)
	}
	v.exportTo("spec.exportTo", s.ExportTo)
}

func (v *validator) httpRoute(f string, r *networking.HTTPRoute) {
	if len(r.Route) == 0 && r.Redirect == nil && r.DirectResponse == nil && r.Delegate == nil {
		v.errorf(f, "a route needs route destinations, a redirect or a direct response")
	}
	for j, m := range r.Match {
		mf := fmt.Sprintf("%s.match[%d]", f, j)
		if m == nil {
			continue
		}
		if m.Uri != nil && m.Uri.MatchType == nil {
			v.errorf(mf+".uri", "one of exact, prefix or regex is required")
		}
		v.stringMatch(mf+".uri", m.Uri)
		for _, name := range sortedKeys(m.Headers) {
			hf := fmt.Sprintf("%s.headers[%s]", mf, name)
			if name == "" || strings.ToLower(name) != name {
				v.errorf(hf, "header names must be lowercase")
			}
			v.stringMatch(hf, m.Headers[name])
		}
		for _, name := range sortedKeys(m.WithoutHeaders) {
			v.stringMatch(fmt.Sprintf("%s.withoutHeaders[%s]", mf, name), m.WithoutHeaders[name])
		}
		if m.Port != 0 {
			v.port(mf+".port", m.Port)
		}
	}
	var total int64
	for j, d := range r.Route {
		df := fmt.Sprintf("%s.route[%d]", f, j)
		if d == nil || d.Destination == nil {
			v.errorf(df+".destination", "destination is required")
			continue
		}
		v.host(df+".destination.host", d.Destination.Host)
		if d.Destination.Host == "*" {
			v.errorf(df+".destination.host", "wildcard host is not allowed as a destination")
		}
		if d.Destination.Port != nil {
			v.port(df+".destination.port.number", d.Destination.Port.Number)
		}
		if d.Weight < 0 {
			v.errorf(df+".weight", "weight %d is negative", d.Weight)
		}
		total += int64(d.Weight)
	}
	if len(r.Route) > 1 && total == 0 {
		v.errorf(f+".route", "destinations of a split need weights, and they must not all be 0")
	}
	if total > 0 && total != 100 && len(r.Route) > 1 {
		v.errorf(f+".route", "destination weights add up to %d, not 100", total)
	}
	v.duration(f+".timeout", r.Timeout)
	if r.Retries != nil {
		if r.Retries.Attempts < 0 {
			v.errorf(f+".retries.attempts", "attempts %d is negative", r.Retries.Attempts)
		}
		v.duration(f+".retries.perTryTimeout", r.Retries.PerTryTimeout)
		v.duration(f+".retries.backoff", r.Retries.Backoff)
	}
}

// stringMatch checks a match; an empty one ({}) is allowed and means "present".
func (v *validator) stringMatch(f string, m *networking.StringMatch) {
	if m == nil {
		return
	}
	if t, ok := m.MatchType.(*networking.StringMatch_Regex); ok {
		if _, err := regexp.Compile(t.Regex); err != nil {
			v.errorf(f+".regex", "invalid regular expression: %v", err)
		}
	}
}

func (v *validator) destinationRule(s *networking.DestinationRule) {
	v.host("spec.host", s.Host)
	seen := map[string]bool{}
	for i, ss := range s.Subsets {
		f := fmt.Sprintf("spec.subsets[%d]", i)
		if ss == nil {
			v.errorf(f, "subset is empty")
			continue
		}
		switch {
		case ss.Name == "":
			v.errorf(f+".name", "subset name is required")
		case seen[ss.Name]:
			v.errorf(f+".name", "duplicate subset name %q", ss.Name)
		case !dns1123Subdomain.MatchString(ss.Name) || strings.Contains(ss.Name, "|"):
			v.errorf(f+".name", "subset name %q must be a DNS label", ss.Name)
		}
		seen[ss.Name] = true
		v.trafficPolicy(f+".trafficPolicy", ss.TrafficPolicy)
	}
	v.trafficPolicy("spec.trafficPolicy", s.TrafficPolicy)
	v.exportTo("spec.exportTo", s.ExportTo)
}

func (v *validator) trafficPolicy(f string, tp *networking.TrafficPolicy) {
	if tp == nil {
		return
	}
	for i, pl := range tp.PortLevelSettings {
		pf := fmt.Sprintf("%s.portLevelSettings[%d]", f, i)
		if pl == nil || pl.Port == nil {
			v.errorf(pf+".port", "port is required")
			continue
		}
		v.port(pf+".port.number", pl.Port.Number)
	}
}

// peerAuthentication applies Istio's rules: port-level settings only with a selector
// (they name ports of the selected workloads), a selector names at least one label,
// without wildcards, and modes are known values.
func (v *validator) peerAuthentication(s *security.PeerAuthentication) {
	v.workloadSelector("spec.selector", s.Selector)
	v.mtlsMode("spec.mtls.mode", s.Mtls)
	if len(s.PortLevelMtls) > 0 && len(s.Selector.GetMatchLabels()) == 0 {
		v.errorf("spec.portLevelMtls", "port-level mTLS needs a selector: a mesh- or namespace-wide policy cannot have it")
	}
	for _, port := range slices.Sorted(maps.Keys(s.PortLevelMtls)) {
		f := fmt.Sprintf("spec.portLevelMtls[%d]", port)
		v.port(f, port)
		v.mtlsMode(f+".mode", s.PortLevelMtls[port])
	}
}

// selectorMessage is a policy's selector: Istio's type.v1beta1.WorkloadSelector or
// RegoPolicy's copy of it, both a message with matchLabels.
type selectorMessage interface {
	ProtoReflect() protoreflect.Message
	GetMatchLabels() map[string]string
}

// workloadSelector checks a policy's selector at field f, if set: it names at
// least one label, and neither names nor values have wildcards.
func (v *validator) workloadSelector(f string, sel selectorMessage) {
	if !sel.ProtoReflect().IsValid() { // a nil message: no selector
		return
	}
	labels := sel.GetMatchLabels()
	if len(labels) == 0 {
		v.errorf(f+".matchLabels", "a selector needs at least one label (leave the selector out for a namespace-wide policy)")
	}
	for _, k := range sortedKeys(labels) {
		lf := fmt.Sprintf("%s.matchLabels[%s]", f, k)
		switch {
		case k == "":
			v.errorf(lf, "a label name must not be empty")
		case strings.Contains(k, "*") || strings.Contains(labels[k], "*"):
			v.errorf(lf, "wildcards are not supported in selectors")
		}
	}
}

func (v *validator) mtlsMode(f string, m *security.PeerAuthentication_MutualTLS) {
	if mode := m.GetMode(); security.PeerAuthentication_MutualTLS_Mode_name[int32(mode)] == "" {
		v.errorf(f, "unknown mode %d (use UNSET, DISABLE, PERMISSIVE or STRICT)", mode)
	}
}
