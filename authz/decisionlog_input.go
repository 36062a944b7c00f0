package authz

import (
	"encoding/base64"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// appendInput appends the decision log's input for req: the JSON of Input(req),
// with the masked values replaced (see masked), written straight from the
// CheckRequest. Building Input's OPA values only to encode them cost a decision
// log more than the native decision it records; TestLogInputIsInput and
// FuzzInput check that the two agree. Object keys are written sorted, as OPA's
// objects encode. The rare parts Input converts through protojson (metadata,
// addresses that are not socket addresses) and the parsed body are encoded from
// Input's own values.
func appendInput(b []byte, req *authv3.CheckRequest, keys *[]string) []byte {
	attrs := req.GetAttributes()
	httpReq := attrs.GetRequest().GetHttp()
	headers := httpHeaders(httpReq)
	b = append(b, '{')
	if attrs != nil {
		b = append(b, `"attributes":`...)
		b = appendAttributes(b, attrs, headers, keys)
		b = append(b, ',')
	}
	b = append(b, `"palisade":{"workload":`...)
	b = appendValue(b, workload(attrs).Value)
	b = append(b, '}')
	body, truncated, parsedBody := parseBody(httpReq, headers)
	if parsedBody {
		b = append(b, `,"parsed_body":`...)
		b = appendValue(b, body.Value)
	}
	b = appendParsedPath(b, httpReq.GetPath(), keys)
	if parsedBody {
		b = append(b, `,"truncated_body":`...)
		b = strconv.AppendBool(b, truncated)
	}
	return append(b, `,"version":{"encoding":"protojson","ext_authz":"v3"}}`...)
}

func appendAttributes(b []byte, a *authv3.AttributeContext, headers map[string]string, keys *[]string) []byte {
	b = append(b, '{')
	n := 0
	field := func(name string) {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendString(b, name)
		b = append(b, ':')
	}
	if len(a.ContextExtensions) > 0 {
		field("contextExtensions")
		b = appendStringMap(b, a.ContextExtensions, keys)
	}
	if a.Destination != nil {
		field("destination")
		b = appendPeer(b, a.Destination, keys)
	}
	if t := metadata(a.MetadataContext); t != nil {
		field("metadataContext")
		b = appendValue(b, t.Value)
	}
	if r := a.Request; r != nil {
		field("request")
		b = append(b, '{')
		if h := r.Http; h != nil {
			b = append(b, `"http":`...)
			b = appendHTTP(b, h, headers, keys)
		}
		if r.Time != nil {
			if h := r.Http; h != nil {
				b = append(b, ',')
			}
			b = append(b, `"time":`...)
			b = appendString(b, timestamp(r.Time))
		}
		b = append(b, '}')
	}
	if t := metadata(a.RouteMetadataContext); t != nil {
		field("routeMetadataContext")
		b = appendValue(b, t.Value)
	}
	if a.Source != nil {
		field("source")
		b = appendPeer(b, a.Source, keys)
	}
	if a.TlsSession != nil {
		field("tlsSession")
		b = append(b, '{')
		if a.TlsSession.Sni != "" {
			b = append(b, `"sni":`...)
			b = appendString(b, a.TlsSession.Sni)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendPeer is peerObject's JSON.
func appendPeer(b []byte, p *authv3.AttributeContext_Peer, keys *[]string) []byte {
	b = append(b, '{')
	n := 0
	field := func(name string) {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendString(b, name)
		b = append(b, ':')
	}
	if sa := p.GetAddress().GetSocketAddress(); sa != nil {
		field("address")
		b = append(b, `{"socketAddress":{`...)
		m := 0
		sub := func(name string) {
			if m > 0 {
				b = append(b, ',')
			}
			m++
			b = appendString(b, name)
			b = append(b, ':')
		}
		if sa.Address != "" {
			sub("address")
			b = appendString(b, sa.Address)
		}
		switch port := sa.PortSpecifier.(type) {
		case *corev3.SocketAddress_NamedPort:
			sub("namedPort")
			b = appendString(b, port.NamedPort)
		case *corev3.SocketAddress_PortValue:
			if port.PortValue != 0 {
				sub("portValue")
				b = strconv.AppendUint(b, uint64(port.PortValue), 10)
			}
		}
		if sa.Protocol != corev3.SocketAddress_TCP {
			sub("protocol")
			b = appendString(b, sa.Protocol.String())
		}
		b = append(b, "}}"...)
	} else if p.GetAddress() != nil {
		if t := viaJSON(p.GetAddress()); t != nil {
			field("address")
			b = appendValue(b, t.Value)
		}
	}
	if p.Certificate != "" {
		field("certificate")
		b = appendString(b, p.Certificate)
	}
	if len(p.Labels) > 0 {
		field("labels")
		b = appendStringMap(b, p.Labels, keys)
	}
	if p.Principal != "" {
		field("principal")
		b = appendString(b, p.Principal)
	}
	if p.Service != "" {
		field("service")
		b = appendString(b, p.Service)
	}
	return append(b, '}')
}

// appendHTTP is httpRequest's JSON, the headers' secrets and the request
// target's access_token masked.
func appendHTTP(b []byte, h *authv3.AttributeContext_HttpRequest, headers map[string]string, keys *[]string) []byte {
	b = append(b, '{')
	n := 0
	str := func(name, value string) {
		if value == "" {
			return
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendString(b, name)
		b = append(b, ':')
		b = appendString(b, value)
	}
	str("body", h.Body)
	str("fragment", h.Fragment)
	if len(headers) > 0 {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, `"headers":{`...)
		for i, k := range sortedKeys(headers, keys) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			switch k {
			case "authorization", "proxy-authorization", "cookie":
				b = appendString(b, maskedValue)
			case ":path":
				b = appendString(b, maskTarget(headers[k]))
			default:
				b = appendString(b, headers[k])
			}
		}
		b = append(b, '}')
	}
	str("host", h.Host)
	str("id", h.Id)
	str("method", h.Method)
	str("path", maskTarget(h.Path))
	str("protocol", h.Protocol)
	str("query", h.Query)
	if len(h.RawBody) > 0 {
		str("rawBody", base64.StdEncoding.EncodeToString(h.RawBody))
	}
	str("scheme", h.Scheme)
	if h.Size != 0 {
		str("size", strconv.FormatInt(h.Size, 10)) // protojson writes 64-bit integers as strings
	}
	return append(b, '}')
}

// appendParsedPath appends ,"parsed_path":[...],"parsed_query":{...} as
// parsePath makes them, the access_token parameter masked.
func appendParsedPath(b []byte, target string, keys *[]string) []byte {
	raw, rawQuery, _ := strings.Cut(target, "?")
	decoded, err := url.PathUnescape(raw)
	if err != nil {
		decoded = raw
	}
	b = append(b, `,"parsed_path":[`...)
	for i, s := range strings.Split(strings.TrimLeft(decoded, "/"), "/") {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	b = append(b, `],"parsed_query":{`...)
	if rawQuery != "" {
		values, _ := url.ParseQuery(rawQuery)
		for i, k := range sortedKeys(values, keys) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			if k == "access_token" {
				b = appendString(b, maskedValue)
				continue
			}
			b = append(b, '[')
			for j, v := range values[k] {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendString(b, v)
			}
			b = append(b, ']')
		}
	}
	return append(b, '}')
}

func appendStringMap(b []byte, m map[string]string, keys *[]string) []byte {
	b = append(b, '{')
	for i, k := range sortedKeys(m, keys) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

// sortedKeys returns m's keys sorted, in scratch's storage: the encoder's, reused
// from entry to entry (no map's keys are sorted while another's are in use).
func sortedKeys[V any](m map[string]V, scratch *[]string) []string {
	keys := slices.AppendSeq((*scratch)[:0], maps.Keys(m))
	slices.Sort(keys)
	*scratch = keys
	return keys
}
