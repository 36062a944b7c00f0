// Package authz is Palisade's Envoy ext_authz server: it maps a CheckRequest to the
// input document OPA-Envoy policies are written against, evaluates the policy in
// force, answers with the decision, and writes decision logs.
package authz

import (
	"encoding/base64"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The context extensions by which the xDS configuration tells the ext_authz server
// which workload is being called; Rego reads them as input.palisade.workload.
const (
	ExtensionWorkloadNamespace = "palisade.workload.namespace"
	// ExtensionWorkloadLabels holds the labels as "k1=v1,k2=v2", sorted by key
	// (Kubernetes label keys and values contain neither ',' nor '=').
	ExtensionWorkloadLabels = "palisade.workload.labels"
)

// EncodeLabels is the form of ExtensionWorkloadLabels.
func EncodeLabels(keys []string, labels map[string]string) string {
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// Interned keys of the input document: building the input allocates no key strings.
var (
	kAttributes        = ast.StringTerm("attributes")
	kSource            = ast.StringTerm("source")
	kDestination       = ast.StringTerm("destination")
	kRequest           = ast.StringTerm("request")
	kHTTP              = ast.StringTerm("http")
	kAddress           = ast.StringTerm("address")
	kSocketAddress     = ast.StringTerm("socketAddress")
	kPortValue         = ast.StringTerm("portValue")
	kNamedPort         = ast.StringTerm("namedPort")
	kPrincipal         = ast.StringTerm("principal")
	kService           = ast.StringTerm("service")
	kLabels            = ast.StringTerm("labels")
	kCertificate       = ast.StringTerm("certificate")
	kTime              = ast.StringTerm("time")
	kID                = ast.StringTerm("id")
	kMethod            = ast.StringTerm("method")
	kHeaders           = ast.StringTerm("headers")
	kPath              = ast.StringTerm("path")
	kHost              = ast.StringTerm("host")
	kScheme            = ast.StringTerm("scheme")
	kQuery             = ast.StringTerm("query")
	kFragment          = ast.StringTerm("fragment")
	kSize              = ast.StringTerm("size")
	kProtocol          = ast.StringTerm("protocol")
	kBody              = ast.StringTerm("body")
	kRawBody           = ast.StringTerm("rawBody")
	kContextExtensions = ast.StringTerm("contextExtensions")
	kMetadataContext   = ast.StringTerm("metadataContext")
	kRouteMetadata     = ast.StringTerm("routeMetadataContext")
	kTLSSession        = ast.StringTerm("tlsSession")
	kSNI               = ast.StringTerm("sni")
	kParsedPath        = ast.StringTerm("parsed_path")
	kParsedQuery       = ast.StringTerm("parsed_query")
	kParsedBody        = ast.StringTerm("parsed_body")
	kTruncatedBody     = ast.StringTerm("truncated_body")
	kVersion           = ast.StringTerm("version")
	kPalisade          = ast.StringTerm("palisade")
	kWorkload          = ast.StringTerm("workload")
	kNamespace         = ast.StringTerm("namespace")

	versionTerm = ast.ObjectTerm(
		ast.Item(ast.StringTerm("encoding"), ast.StringTerm("protojson")),
		ast.Item(ast.StringTerm("ext_authz"), ast.StringTerm("v3")),
	)
)

// Input maps a CheckRequest to the input document: the CheckRequest in protojson's
// shape (as OPA-Envoy presents it), parsed_path, parsed_query, parsed_body,
// truncated_body, version, and input.palisade.workload. It builds OPA's values
// directly, without a JSON round trip, and never fails: a part that cannot be parsed
// (a malformed path, a body that is not the JSON it claims) is left out, and policies
// that need it are undefined, which denies.
func Input(req *authv3.CheckRequest) ast.Value { return buildInput(req, &allParts) }

// inputParts are the parts of the input document to build. A decision reads only
// a few (a compiled one: the source's principal, the method, the path, a header
// or two), and building the rest, the headers above all, costs about half as much
// as the decision itself; so the server builds what the query can read
// (rego.Prepared.InputPaths), which gives the query the same values.
type inputParts struct {
	source, destination, requestTime, http, contextExtensions bool
	metadata, routeMetadata, tls                              bool
	headers                                                   bool     // all of them
	headerNames                                               []string // else these (lower case)
	parsedPath, parsedQuery, parsedBody, palisade             bool
}

var allParts = inputParts{
	source: true, destination: true, requestTime: true, http: true, contextExtensions: true,
	metadata: true, routeMetadata: true, tls: true, headers: true,
	parsedPath: true, parsedQuery: true, parsedBody: true, palisade: true,
}

// partsOf returns the parts of the input that hold the given paths
// (rego.Prepared.InputPaths: input itself is all of it).
func partsOf(paths []ast.Ref) *inputParts {
	parts := &inputParts{}
	for _, path := range paths {
		var keys []string
		for _, t := range path[1:] {
			s, ok := t.Value.(ast.String)
			if !ok {
				break // the whole value under the string keys so far
			}
			keys = append(keys, string(s))
		}
		parts.add(keys)
	}
	return parts
}

// add adds the parts under input.keys[0].keys[1]...; keys the document does not
// have need nothing (the value there is undefined either way).
func (ps *inputParts) add(keys []string) {
	at := func(i int) string {
		if i < len(keys) {
			return keys[i]
		}
		return ""
	}
	switch at(0) {
	case "":
		*ps = allParts
	case "parsed_path":
		ps.parsedPath = true
	case "parsed_query":
		ps.parsedQuery = true
	case "parsed_body", "truncated_body":
		ps.parsedBody = true
	case "palisade":
		ps.palisade = true
	case "attributes":
		switch at(1) {
		case "":
			ps.source, ps.destination, ps.requestTime, ps.http, ps.headers = true, true, true, true, true
			ps.contextExtensions, ps.metadata, ps.routeMetadata, ps.tls = true, true, true, true
		case "source":
			ps.source = true
		case "destination":
			ps.destination = true
		case "contextExtensions":
			ps.contextExtensions = true
		case "metadataContext":
			ps.metadata = true
		case "routeMetadataContext":
			ps.routeMetadata = true
		case "tlsSession":
			ps.tls = true
		case "request":
			switch at(2) {
			case "":
				ps.requestTime, ps.http, ps.headers = true, true, true
			case "time":
				ps.requestTime = true
			case "http":
				switch at(3) {
				case "":
					ps.http, ps.headers = true, true
				case "headers":
					if name := at(4); name == "" {
						ps.headers = true
					} else if !slices.Contains(ps.headerNames, name) {
						ps.headerNames = append(ps.headerNames, name)
					}
				default:
					ps.http = true
				}
			}
		}
	}
}

func buildInput(req *authv3.CheckRequest, parts *inputParts) ast.Value {
	attrs := req.GetAttributes()
	httpReq := attrs.GetRequest().GetHttp()
	headers := httpHeaders(httpReq)

	input := ast.NewObject()
	if attrs != nil {
		input.Insert(kAttributes, ast.NewTerm(attributes(attrs, headers, parts)))
	}
	if parts.parsedPath || parts.parsedQuery {
		path, query := parsePath(httpReq.GetPath(), parts.parsedQuery)
		if parts.parsedPath {
			input.Insert(kParsedPath, path)
		}
		if parts.parsedQuery {
			input.Insert(kParsedQuery, query)
		}
	}
	if parts.parsedBody {
		if body, truncated, ok := parseBody(httpReq, headers); ok {
			input.Insert(kParsedBody, body)
			input.Insert(kTruncatedBody, ast.InternedTerm(truncated))
		}
	}
	input.Insert(kVersion, versionTerm)
	if parts.palisade {
		input.Insert(kPalisade, ast.ObjectTerm(ast.Item(kWorkload, workload(attrs))))
	}
	return input
}

// httpHeaders returns the request's headers, from header_map when Envoy sends raw
// headers (repeated names are joined with ',' as in the headers field).
func httpHeaders(h *authv3.AttributeContext_HttpRequest) map[string]string {
	if len(h.GetHeaders()) > 0 || h.GetHeaderMap() == nil {
		return h.GetHeaders()
	}
	m := make(map[string]string, len(h.GetHeaderMap().GetHeaders()))
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		k := strings.ToLower(hv.GetKey())
		v := hv.GetValue()
		if len(hv.GetRawValue()) > 0 {
			v = string(hv.GetRawValue())
		}
		if prev, ok := m[k]; ok {
			v = prev + "," + v
		}
		m[k] = v
	}
	return m
}

func attributes(a *authv3.AttributeContext, headers map[string]string, parts *inputParts) ast.Object {
	o := ast.NewObject()
	if a.Source != nil && parts.source {
		o.Insert(kSource, ast.NewTerm(peerObject(a.Source)))
	}
	if a.Destination != nil && parts.destination {
		o.Insert(kDestination, ast.NewTerm(peerObject(a.Destination)))
	}
	if a.Request != nil {
		r := ast.NewObject()
		if a.Request.Time != nil && parts.requestTime {
			r.Insert(kTime, ast.StringTerm(timestamp(a.Request.Time)))
		}
		if h := a.Request.Http; h != nil {
			r.Insert(kHTTP, ast.NewTerm(httpRequest(h, headers, parts)))
		}
		o.Insert(kRequest, ast.NewTerm(r))
	}
	if len(a.ContextExtensions) > 0 && parts.contextExtensions {
		o.Insert(kContextExtensions, stringMap(a.ContextExtensions))
	}
	if t := metadata(a.MetadataContext); t != nil && parts.metadata {
		o.Insert(kMetadataContext, t)
	}
	if t := metadata(a.RouteMetadataContext); t != nil && parts.routeMetadata {
		o.Insert(kRouteMetadata, t)
	}
	if a.TlsSession != nil && parts.tls {
		tls := ast.NewObject()
		if a.TlsSession.Sni != "" {
			tls.Insert(kSNI, ast.StringTerm(a.TlsSession.Sni))
		}
		o.Insert(kTLSSession, ast.NewTerm(tls))
	}
	return o
}

// peerObject maps a Peer as protojson would: empty fields are left out.
func peerObject(p *authv3.AttributeContext_Peer) ast.Object {
	o := ast.NewObject()
	if sa := p.GetAddress().GetSocketAddress(); sa != nil {
		s := ast.NewObject()
		if sa.Protocol != corev3.SocketAddress_TCP {
			s.Insert(kProtocol, ast.StringTerm(sa.Protocol.String()))
		}
		if sa.Address != "" {
			s.Insert(kAddress, ast.StringTerm(sa.Address))
		}
		switch port := sa.PortSpecifier.(type) {
		case *corev3.SocketAddress_PortValue:
			if port.PortValue != 0 {
				s.Insert(kPortValue, ast.InternedTerm(int(port.PortValue)))
			}
		case *corev3.SocketAddress_NamedPort:
			s.Insert(kNamedPort, ast.StringTerm(port.NamedPort))
		}
		o.Insert(kAddress, ast.ObjectTerm(ast.Item(kSocketAddress, ast.NewTerm(s))))
	} else if p.GetAddress() != nil {
		if t := viaJSON(p.GetAddress()); t != nil {
			o.Insert(kAddress, t)
		}
	}
	if p.Service != "" {
		o.Insert(kService, ast.StringTerm(p.Service))
	}
	if len(p.Labels) > 0 {
		o.Insert(kLabels, stringMap(p.Labels))
	}
	if p.Principal != "" {
		o.Insert(kPrincipal, ast.StringTerm(p.Principal))
	}
	if p.Certificate != "" {
		o.Insert(kCertificate, ast.StringTerm(p.Certificate))
	}
	return o
}

func httpRequest(h *authv3.AttributeContext_HttpRequest, headers map[string]string, parts *inputParts) ast.Object {
	o := ast.NewObject()
	switch {
	case parts.headers && len(headers) > 0:
		o.Insert(kHeaders, stringMap(headers))
	case len(parts.headerNames) > 0:
		hs := ast.NewObject()
		for _, name := range parts.headerNames {
			if v, ok := headers[name]; ok {
				hs.Insert(keyTerm(name), ast.StringTerm(v))
			}
		}
		if hs.Len() > 0 {
			o.Insert(kHeaders, ast.NewTerm(hs))
		}
	}
	if !parts.http {
		return o
	}
	for _, f := range [...]struct {
		key   *ast.Term
		value string
	}{
		{kID, h.Id}, {kMethod, h.Method}, {kPath, h.Path}, {kHost, h.Host}, {kScheme, h.Scheme},
		{kQuery, h.Query}, {kFragment, h.Fragment}, {kProtocol, h.Protocol}, {kBody, h.Body},
	} {
		if f.value != "" {
			o.Insert(f.key, ast.StringTerm(f.value))
		}
	}
	if h.Size != 0 {
		// protojson writes 64-bit integers as strings.
		o.Insert(kSize, ast.StringTerm(strconv.FormatInt(h.Size, 10)))
	}
	if len(h.RawBody) > 0 {
		o.Insert(kRawBody, ast.StringTerm(base64.StdEncoding.EncodeToString(h.RawBody)))
	}
	return o
}

func stringMap(m map[string]string) *ast.Term {
	o := ast.NewObjectWithCapacity(len(m))
	for k, v := range m {
		o.Insert(keyTerm(k), ast.StringTerm(v))
	}
	return ast.NewTerm(o)
}

// commonKeys are terms of the header names (and context extensions) most
// requests carry, shared by every input (OPA never modifies its input), so that
// building the headers allocates only their values.
var commonKeys = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{
		":authority", ":method", ":path", ":scheme", "accept", "accept-encoding", "accept-language",
		"authorization", "content-length", "content-type", "cookie", "grpc-timeout", "te", "traceparent",
		"tracestate", "user-agent", "x-b3-parentspanid", "x-b3-sampled", "x-b3-spanid", "x-b3-traceid",
		"x-envoy-attempt-count", "x-envoy-expected-rq-timeout-ms", "x-envoy-external-address",
		"x-envoy-internal", "x-forwarded-client-cert", "x-forwarded-for", "x-forwarded-proto",
		"x-request-id", ExtensionWorkloadNamespace, ExtensionWorkloadLabels,
	} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

func keyTerm(k string) *ast.Term {
	if t, ok := commonKeys[k]; ok {
		return t
	}
	return ast.StringTerm(k)
}

// timestamp formats t as protojson does.
func timestamp(t *timestamppb.Timestamp) string {
	s := t.AsTime().UTC().Format("2006-01-02T15:04:05.000000000")
	s = strings.TrimSuffix(s, "000")
	s = strings.TrimSuffix(s, "000")
	s = strings.TrimSuffix(s, ".000")
	return s + "Z"
}

// metadata maps Envoy's metadata; Envoy sends it empty on every request unless
// filters add some, and the empty form needs no conversion.
func metadata(m *corev3.Metadata) *ast.Term {
	switch {
	case m == nil:
		return nil
	case len(m.FilterMetadata) == 0 && len(m.TypedFilterMetadata) == 0:
		return ast.ObjectTerm()
	}
	return viaJSON(m)
}

// viaJSON converts a rarely present part (metadata, non-socket addresses) the slow
// way, through protojson.
func viaJSON(m proto.Message) *ast.Term {
	bs, err := protojson.Marshal(m)
	if err != nil {
		return nil
	}
	var v any
	if err := util.UnmarshalJSON(bs, &v); err != nil {
		return nil
	}
	val, err := ast.InterfaceToValue(v)
	if err != nil {
		return nil
	}
	return ast.NewTerm(val)
}

// parsePath splits the request target as OPA-Envoy does: the path's segments
// (pathSegments) and the query's values by name (targetQuery).
func parsePath(target string, withQuery bool) (path, query *ast.Term) {
	segments := pathSegments(target)
	terms := make([]*ast.Term, len(segments))
	for i, s := range segments {
		terms[i] = ast.StringTerm(s)
	}
	q := ast.NewObject()
	if withQuery {
		for k, vs := range targetQuery(target) {
			items := make([]*ast.Term, len(vs))
			for i, v := range vs {
				items[i] = ast.StringTerm(v)
			}
			q.Insert(ast.StringTerm(k), ast.ArrayTerm(items...))
		}
	}
	return ast.ArrayTerm(terms...), ast.NewTerm(q)
}

// pathSegments are input.parsed_path: the target's path percent-decoded (kept
// raw when it does not decode), its leading '/' removed, split at '/'.
func pathSegments(target string) []string {
	raw, _, _ := strings.Cut(target, "?")
	decoded, err := url.PathUnescape(raw)
	if err != nil {
		decoded = raw
	}
	return strings.Split(strings.TrimLeft(decoded, "/"), "/")
}

// targetQuery is input.parsed_query: the values of the target's query by name,
// what of it parses (nil without a query).
func targetQuery(target string) url.Values {
	_, raw, _ := strings.Cut(target, "?")
	if raw == "" {
		return nil
	}
	values, _ := url.ParseQuery(raw) // keeps what parses, as net/url does
	return values
}

// parseBody parses a JSON body as OPA-Envoy does: only when the content type says
// JSON; a body shorter than its content-length is truncated and not parsed. ok is
// false when there is no parsed body to give.
func parseBody(h *authv3.AttributeContext_HttpRequest, headers map[string]string) (body *ast.Term, truncated, ok bool) {
	if !strings.Contains(headers["content-type"], "application/json") {
		return nil, false, false
	}
	data := h.GetBody()
	if data == "" && len(h.GetRawBody()) > 0 {
		data = string(h.GetRawBody())
	}
	if data == "" {
		return ast.NullTerm(), false, true
	}
	if cl, err := strconv.ParseInt(headers["content-length"], 10, 64); err == nil && cl > int64(len(data)) {
		return ast.NullTerm(), true, true
	}
	v, err := ast.ValueFromReader(strings.NewReader(data))
	if err != nil {
		return nil, false, false
	}
	return ast.NewTerm(v), false, true
}

// workload is input.palisade.workload: the namespace and labels the xDS
// configuration put in the context extensions, or else the namespace of the
// destination's SPIFFE ID.
func workload(a *authv3.AttributeContext) *ast.Term {
	return ast.ObjectTerm(
		ast.Item(kNamespace, ast.StringTerm(workloadNamespace(a))),
		ast.Item(kLabels, workloadLabels(a)),
	)
}

func workloadNamespace(a *authv3.AttributeContext) string {
	if ns, ok := a.GetContextExtensions()[ExtensionWorkloadNamespace]; ok {
		return ns
	}
	return spiffeNamespace(a.GetDestination().GetPrincipal())
}

func workloadLabels(a *authv3.AttributeContext) *ast.Term {
	return labelsTerm(a.GetContextExtensions()[ExtensionWorkloadLabels])
}

// spiffeNamespace returns NS of spiffe://TD/ns/NS/sa/SA, or "".
func spiffeNamespace(id string) string {
	_, rest, ok := strings.Cut(id, "/ns/")
	if !strings.HasPrefix(id, "spiffe://") || !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// labelsCache keeps the parsed form of the few distinct label strings a server
// sees (one per workload), so a request does not parse them again. Parsed values
// are shared between inputs; OPA never modifies its input.
var labelsCache = struct {
	sync.RWMutex
	m map[string]*ast.Term
}{m: map[string]*ast.Term{}}

// labelsCacheMax bounds the cache against a client sending endless distinct labels.
const labelsCacheMax = 4096

func labelsTerm(s string) *ast.Term {
	labelsCache.RLock()
	t, ok := labelsCache.m[s]
	labelsCache.RUnlock()
	if ok {
		return t
	}
	o := ast.NewObject()
	for pair := range strings.SplitSeq(s, ",") {
		if k, v, ok := strings.Cut(pair, "="); ok && k != "" {
			o.Insert(ast.StringTerm(k), ast.StringTerm(v))
		}
	}
	t = ast.NewTerm(o)
	labelsCache.Lock()
	if len(labelsCache.m) >= labelsCacheMax {
		clear(labelsCache.m)
	}
	labelsCache.m[s] = t
	labelsCache.Unlock()
	return t
}
