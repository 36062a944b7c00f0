package authz

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
)

// FuzzInput: any request, however odd its path, headers or body, maps to an input
// document that is valid JSON and gets a decision (here from a policy reading every
// part of the input); the mapping never panics.
func FuzzInput(f *testing.F) {
	f.Add("GET", "/a/b?x=1&y=%zz", "application/json", `{"a":[1,2]}`, "k", "v", "app=x,version=v1")
	f.Add("POST", "//evil/%2e%2e/..;/x#frag", "application/json; charset=utf-8", `{"a":`, "content-length", "99", "")
	f.Add("", "", "", "", "", "", "=,,=")
	f.Add("GET", "/%", "text/plain", "\xff\xfe", "x-\xff", "\x00", "a=\xff")
	policy := engineWith(f, `package palisade.mesh

decision := {"allowed": allowed, "n": count(input.parsed_path) + count(input.parsed_query)} if {
	allowed := object.get(input.attributes.request.http, "method", "") == "GET"
	is_object(input.palisade.workload.labels)
}`)
	f.Fuzz(func(t *testing.T, method, path, contentType, body, hk, hv, labels string) {
		req := request{method: method, path: path, host: "h", headers: map[string]string{"content-type": contentType, hk: hv}, body: body,
			extensions: map[string]string{ExtensionWorkloadNamespace: "ns", ExtensionWorkloadLabels: labels}}.check()
		in := Input(req)
		x, err := ast.JSON(in)
		if err != nil {
			t.Fatalf("input is not JSON: %v", err)
		}
		if _, err := json.Marshal(x); err != nil {
			t.Fatalf("input does not encode: %v", err)
		}
		d := decide(context.Background(), policy.Current(), "", in).decision
		if d.Failure != FailureNone {
			t.Fatalf("no decision for %q %q: %s", method, path, d.Reason)
		}
		if d.Allowed != (method == "GET") {
			t.Fatalf("decision %v for method %q", d.Allowed, method)
		}
		// The decision log's input, written from the request, is the input.
		line := appendInput(nil, req, new([]string))
		var got, want any
		if err := decodeJSON(line, &got); err != nil {
			t.Fatalf("the decision log's input is not JSON: %v\n%s", err, line)
		}
		if err := decodeJSON(maskedInput(t, in), &want); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("the decision log's input differs from the input (-input +log):\n%s", diff)
		}
	})
}
