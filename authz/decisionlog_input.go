package authz

import (
	"encoding/base64"
	"maps"
	"slices"
	"strconv"

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
	// input.palisade.workload, its labels the parsed form Input shares.
	b = append(b, `"palisade":{"workload":{"labels":`...)
	b = appendValue(b, workloadLabels(attrs).Value)
	b = append(b, `,"namespace":`...)
	b = appendString(b, workloadNamespace(attrs))
	b = append(b, "}}"...)
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

// objectWriter writes a JSON object's members, with the commas between them.
type objectWriter struct {
	b []byte
	n int
}

func openObject(b []byte) objectWriter { return objectWriter{b: append(b, '{')} }

// key starts a member: its value is appended to w.b next.
func (w *objectWriter) key(name string) {
	if w.n > 0 {
		w.b = append(w.b, ',')
	}
	w.n++
	w.b = appendString(w.b, name)
	w.b = append(w.b, ':')
}

// str writes a string member, unless value is "" (protojson leaves it out).
func (w *objectWriter) str(name, value string) {
	if value != "" {
		w.key(name)
		w.b = appendString(w.b, value)
	}
}

func (w *objectWriter) close() []byte { return append(w.b, '}') }

func appendAttributes(b []byte, a *authv3.AttributeContext, headers map[string]string, keys *[]string) []byte {
	w := openObject(b)
	if len(a.ContextExtensions) > 0 {
		w.key("contextExtensions")
		w.b = appendStringMap(w.b, a.ContextExtensions, keys)
	}
	if a.Destination != nil {
		w.key("destination")
		w.b = appendPeer(w.b, a.Destination, keys)
	}
	if t := metadata(a.MetadataContext); t != nil {
		w.key("metadataContext")
		w.b = appendValue(w.b, t.Value)
	}
	if r := a.Request; r != nil {
		w.key("request")
		rw := openObject(w.b)
		if h := r.Http; h != nil {
			rw.key("http")
			rw.b = appendHTTP(rw.b, h, headers, keys)
		}
		if r.Time != nil {
			rw.str("time", timestamp(r.Time))
		}
		w.b = rw.close()
	}
	if t := metadata(a.RouteMetadataContext); t != nil {
		w.key("routeMetadataContext")
		w.b = appendValue(w.b, t.Value)
	}
	if a.Source != nil {
		w.key("source")
		w.b = appendPeer(w.b, a.Source, keys)
	}
	if a.TlsSession != nil {
		w.key("tlsSession")
		tw := openObject(w.b)
		tw.str("sni", a.TlsSession.Sni)
		w.b = tw.close()
	}
	return w.close()
}

// appendPeer is peerObject's JSON.
func appendPeer(b []byte, p *authv3.AttributeContext_Peer, keys *[]string) []byte {
	w := openObject(b)
	if sa := p.GetAddress().GetSocketAddress(); sa != nil {
		w.key("address")
		w.b = append(w.b, `{"socketAddress":`...)
		sw := openObject(w.b)
		sw.str("address", sa.Address)
		switch port := sa.PortSpecifier.(type) {
		case *corev3.SocketAddress_NamedPort:
			sw.key("namedPort")
			sw.b = appendString(sw.b, port.NamedPort)
		case *corev3.SocketAddress_PortValue:
			if port.PortValue != 0 {
				sw.key("portValue")
				sw.b = strconv.AppendUint(sw.b, uint64(port.PortValue), 10)
			}
		}
		if sa.Protocol != corev3.SocketAddress_TCP {
			sw.str("protocol", sa.Protocol.String())
		}
		w.b = append(sw.close(), '}')
	} else if p.GetAddress() != nil {
		if t := viaJSON(p.GetAddress()); t != nil {
			w.key("address")
			w.b = appendValue(w.b, t.Value)
		}
	}
	w.str("certificate", p.Certificate)
	if len(p.Labels) > 0 {
		w.key("labels")
		w.b = appendStringMap(w.b, p.Labels, keys)
	}
	w.str("principal", p.Principal)
	w.str("service", p.Service)
	return w.close()
}

// appendHTTP is httpRequest's JSON, the headers' secrets and the request
// target's access_token masked.
func appendHTTP(b []byte, h *authv3.AttributeContext_HttpRequest, headers map[string]string, keys *[]string) []byte {
	w := openObject(b)
	w.str("body", h.Body)
	w.str("fragment", h.Fragment)
	if len(headers) > 0 {
		w.key("headers")
		hw := openObject(w.b)
		for _, k := range sortedKeys(headers, keys) {
			hw.key(k)
			switch k {
			case "authorization", "proxy-authorization", "cookie":
				hw.b = appendString(hw.b, maskedValue) // even ""
			case ":path":
				hw.b = appendString(hw.b, maskTarget(headers[k]))
			default:
				hw.b = appendString(hw.b, headers[k])
			}
		}
		w.b = hw.close()
	}
	w.str("host", h.Host)
	w.str("id", h.Id)
	w.str("method", h.Method)
	w.str("path", maskTarget(h.Path))
	w.str("protocol", h.Protocol)
	w.str("query", h.Query)
	if len(h.RawBody) > 0 {
		w.str("rawBody", base64.StdEncoding.EncodeToString(h.RawBody))
	}
	w.str("scheme", h.Scheme)
	if h.Size != 0 {
		w.str("size", strconv.FormatInt(h.Size, 10)) // protojson writes 64-bit integers as strings
	}
	return w.close()
}

// appendParsedPath appends ,"parsed_path":[...],"parsed_query":{...} as
// parsePath makes them, the access_token parameter masked.
func appendParsedPath(b []byte, target string, keys *[]string) []byte {
	b = append(b, `,"parsed_path":[`...)
	for i, s := range pathSegments(target) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	b = append(b, `],"parsed_query":`...)
	w := openObject(b)
	values := targetQuery(target)
	for _, k := range sortedKeys(values, keys) {
		w.key(k)
		if k == "access_token" {
			w.b = appendString(w.b, maskedValue)
			continue
		}
		w.b = append(w.b, '[')
		for j, v := range values[k] {
			if j > 0 {
				w.b = append(w.b, ',')
			}
			w.b = appendString(w.b, v)
		}
		w.b = append(w.b, ']')
	}
	return w.close()
}

func appendStringMap(b []byte, m map[string]string, keys *[]string) []byte {
	w := openObject(b)
	for _, k := range sortedKeys(m, keys) {
		w.key(k)
		w.b = appendString(w.b, m[k])
	}
	return w.close()
}

// sortedKeys returns m's keys sorted, in scratch's storage: the encoder's, reused
// from entry to entry (no map's keys are sorted while another's are in use).
func sortedKeys[V any](m map[string]V, scratch *[]string) []string {
	keys := slices.AppendSeq((*scratch)[:0], maps.Keys(m))
	slices.Sort(keys)
	*scratch = keys
	return keys
}
