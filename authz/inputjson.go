package authz

import (
	"net/url"
	"strconv"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"
)

// InputViaJSON is the straightforward mapping OPA-Envoy makes: the CheckRequest
// through protojson into a generic map, with parsed_path, parsed_query and
// parsed_body added. Palisade decides with Input, which builds the same document
// directly; this one is the reference for the differential tests and the baseline
// of the benchmark. Unlike Input it fails on a path net/url cannot parse, and
// treats a path starting with "//" as a URL with a host, as OPA-Envoy does.
func InputViaJSON(req *authv3.CheckRequest) (map[string]any, error) {
	bs, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	var input map[string]any
	if err := util.UnmarshalJSON(bs, &input); err != nil {
		return nil, err
	}
	input["version"] = map[string]any{"encoding": "protojson", "ext_authz": "v3"}
	h := req.GetAttributes().GetRequest().GetHttp()
	u, err := url.Parse(h.GetPath())
	if err != nil {
		return nil, err
	}
	segments := strings.Split(strings.TrimLeft(u.Path, "/"), "/")
	path := make([]any, len(segments))
	for i, s := range segments {
		path[i] = s
	}
	query := map[string]any{}
	for k, vs := range u.Query() {
		values := make([]any, len(vs))
		for i, v := range vs {
			values[i] = v
		}
		query[k] = values
	}
	input["parsed_path"], input["parsed_query"] = path, query
	headers := h.GetHeaders()
	if strings.Contains(headers["content-type"], "application/json") {
		var body any
		truncated := false
		if cl, err := strconv.ParseInt(headers["content-length"], 10, 64); h.GetBody() != "" && err == nil && cl > int64(len(h.GetBody())) {
			truncated = true
		} else if h.GetBody() != "" {
			if err := util.UnmarshalJSON([]byte(h.GetBody()), &body); err != nil {
				return nil, err
			}
		}
		input["parsed_body"], input["truncated_body"] = body, truncated
	}
	return input, nil
}
