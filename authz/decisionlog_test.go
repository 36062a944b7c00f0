package authz

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// lockedBuffer is an io.Writer tests can read while the log writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestDecisionLogEntry(t *testing.T) {
	var out lockedBuffer
	l := NewDecisionLog(DecisionLogConfig{Writer: &out, Path: "palisade/mesh/decision", Bundle: "palisade",
		Labels: map[string]string{"id": "palisaded-1", "version": "test"}})
	req := request{method: "GET", path: "/a?access_token=secret-query&x=1", host: "reviews", from: "spiffe://cluster.local/ns/default/sa/productpage",
		headers: map[string]string{"authorization": "Bearer secret-jwt", "cookie": "session=secret-cookie", "x-note": "quote \" and \x01 and \xff"}}.check()
	result := map[string]any{"allowed": false, "reason": "denied by default/deny-admin", "reasons": []any{map[string]any{"policy": "default/deny-admin", "rule": json.Number("0")}}}
	l.log(logEntry{time: time.Unix(1700000000, 5).UTC(), req: req, result: result, decision: Decision{}, revision: "rev-1", peer: "127.0.0.1:5555", duration: 42 * time.Microsecond})
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	line := out.String()
	for _, secret := range []string{"secret-jwt", "secret-cookie", "secret-query"} {
		if strings.Contains(line, secret) {
			t.Errorf("the log shows %q: %s", secret, line)
		}
	}
	var e struct {
		DecisionID  string            `json:"decision_id"`
		Path        string            `json:"path"`
		Labels      map[string]string `json:"labels"`
		Bundles     map[string]struct{ Revision string }
		RequestedBy string `json:"requested_by"`
		Timestamp   time.Time
		Input       struct {
			Attributes struct {
				Request struct {
					HTTP struct{ Headers map[string]string }
				}
			}
			ParsedQuery map[string]any `json:"parsed_query"`
		}
		Result  map[string]any
		Metrics map[string]int64
		Masked  []string
	}
	if err := json.Unmarshal([]byte(line), &e); err != nil {
		t.Fatalf("entry is not JSON: %v\n%s", err, line)
	}
	h := e.Input.Attributes.Request.HTTP.Headers
	if h["authorization"] != maskedValue || h["cookie"] != maskedValue || e.Input.ParsedQuery["access_token"] != maskedValue || h[":path"] != "/a?access_token=**MASKED**&x=1" {
		t.Errorf("secrets not masked: headers %v, query %v", h, e.Input.ParsedQuery)
	}
	if h["x-note"] != "quote \" and \x01 and \ufffd" || h["user-agent"] != "grpc-go/1.85.0" {
		t.Errorf("headers not kept: %v", h)
	}
	if len(e.DecisionID) != 36 || e.DecisionID[14] != '4' || e.Path != "palisade/mesh/decision" || e.Labels["id"] != "palisaded-1" ||
		e.Bundles["palisade"].Revision != "rev-1" || e.RequestedBy != "127.0.0.1:5555" || !e.Timestamp.Equal(time.Unix(1700000000, 5)) ||
		e.Metrics["timer_server_handler_ns"] != 42000 || e.Result["reason"] != "denied by default/deny-admin" || len(e.Masked) != len(masked) {
		t.Errorf("entry fields wrong: %+v", e)
	}
}

func TestDecisionLogFailureEntry(t *testing.T) {
	var out lockedBuffer
	l := NewDecisionLog(DecisionLogConfig{Writer: &out, Path: "p"})
	l.log(logEntry{time: time.Now(), req: request{method: "GET", path: "/"}.check(), decision: failed(FailureEval, "evaluating: boom")})
	l.Close(context.Background())
	var e struct {
		Result map[string]any
		Error  struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(out.String()), &e); err != nil {
		t.Fatal(err, out.String())
	}
	if e.Result["allowed"] != false || e.Error.Code != "eval_error" || e.Error.Message != "evaluating: boom" {
		t.Errorf("failure entry = %+v", e)
	}
}

// blockingWriter blocks every write until released, then counts lines.
type blockingWriter struct {
	release chan struct{}
	out     *lockedBuffer
}

func (w blockingWriter) Write(p []byte) (int, error) { <-w.release; return w.out.Write(p) }

// TestDecisionLogNeverBlocks: with the writer stuck, decisions beyond the buffer are
// dropped and counted, and logging returns at once.
func TestDecisionLogNeverBlocks(t *testing.T) {
	w := blockingWriter{release: make(chan struct{}), out: &lockedBuffer{}}
	drops := 0
	l := NewDecisionLog(DecisionLogConfig{Writer: w, Buffer: 8, Path: "p", OnDrop: func() { drops++ }})
	req := request{method: "GET", path: "/"}.check()
	done := make(chan struct{})
	go func() {
		for range 1000 {
			l.log(logEntry{time: time.Now(), req: req, result: true})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("logging blocked on a stuck writer")
	}
	// The channel holds 8 and the writer what fits its 64 KiB buffer until its
	// first write blocks: most decisions were dropped, and every one is accounted.
	close(w.release)
	l.Close(context.Background())
	written := strings.Count(w.out.String(), "\n")
	if dropped := int(l.Dropped()); dropped < 900 || dropped != drops || written+dropped != 1000 {
		t.Errorf("dropped %d (callback %d), written %d: want most dropped and 1000 in all", dropped, drops, written)
	}
}

func TestDecisionLogLinesAreJSON(t *testing.T) {
	var out lockedBuffer
	l := NewDecisionLog(DecisionLogConfig{Writer: &out, Path: "p"})
	for i := range 50 {
		l.log(logEntry{time: time.Now(), req: request{method: "GET", path: "/x/" + strings.Repeat("é", i)}.check(), result: map[string]any{"allowed": true}})
	}
	l.Close(context.Background())
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			t.Fatalf("line %d is not JSON: %s", n, sc.Text())
		}
		n++
	}
	if n != 50 {
		t.Errorf("%d lines, want 50", n)
	}
}

// TestAppendResultIsJSON: a decision is encoded as encoding/json encodes it (keys
// sorted), without escaping HTML.
func TestAppendResultIsJSON(t *testing.T) {
	for _, v := range []any{
		map[string]any{"allowed": false, "http_status": json.Number("401"), "headers": map[string]any{"www-authenticate": `Bearer realm="x<y>&z"`},
			"reasons": []any{map[string]any{"policy": "ns/p", "rule": json.Number("0"), "detail": "é\u2028\x01"}, nil}, "body": ""},
		true, "s", "back\\slash \"quoted\" bad\xffutf8 tab\t", []any{}, map[string]any{}, 3.5,
	} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		if got := string(appendResult(nil, v)); got != strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("appendResult(%#v) = %s, want %s", v, got, want.String())
		}
	}
}

// TestDecisionIDs: decision IDs are random version 4 UUIDs, as OPA's.
func TestDecisionIDs(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, b := string(appendUUID(nil)), string(appendUUID(nil))
	if !uuid.MatchString(a) || !uuid.MatchString(b) || a == b {
		t.Errorf("decision IDs %q and %q: want two different version 4 UUIDs", a, b)
	}
}

// TestLogInputIsInput: the decision log's input, written straight from the
// CheckRequest, is Input's document with the secrets masked, for requests with
// every part Input maps (the differential test's random requests, and bodies,
// metadata, odd addresses and targets).
func TestLogInputIsInput(t *testing.T) {
	gen := newRequestGen(newSigners(t), 3)
	var reqs []*authv3.CheckRequest
	for range 300 {
		reqs = append(reqs, gen.request(WorkloadKey{"default", "app=reviews,version=v1"}))
	}
	odd := request{method: "POST", path: "//a/%2e%2e/b;c?access_token=s&access_token=t&x=%zz&=y#f", host: "h:1",
		from: "spiffe://td/ns/a/sa/b", body: `{"a":[1,2.50,{"b":null}]}`, port: 7,
		headers:    map[string]string{"content-type": "application/json", "proxy-authorization": "Basic c2VjcmV0", "x-esc": "\u2028\u2029\t\x01"},
		extensions: map[string]string{ExtensionWorkloadNamespace: "default", ExtensionWorkloadLabels: "b=2,a=1,a=3,,=x"}}.check()
	odd.Attributes.Request.Http.RawBody = []byte{0, 1, 2}
	odd.Attributes.Request.Http.Size = 1 << 40
	odd.Attributes.Request.Http.Fragment = "frag"
	odd.Attributes.Request.Http.Query = "q"
	odd.Attributes.Request.Http.Id = "42"
	odd.Attributes.Request.Time = timestamppb.New(time.Unix(1700000000, 120000000))
	odd.Attributes.Source.Labels = map[string]string{"l": "v"}
	odd.Attributes.Source.Service = "svc"
	odd.Attributes.Source.Certificate = "cert"
	odd.Attributes.Destination.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/sock"}}}
	odd.Attributes.TlsSession = &authv3.AttributeContext_TLSSession{}
	odd.Attributes.MetadataContext = &corev3.Metadata{}
	odd.Attributes.RouteMetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": {Fields: map[string]*structpb.Value{"k": structpb.NewStringValue("v")}}}}
	truncated := request{method: "PUT", path: "/", headers: map[string]string{"content-type": "application/json", "content-length": "99"}, body: `{"a":`}.check()
	reqs = append(reqs, odd, truncated, &authv3.CheckRequest{}, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}})
	for i, req := range reqs {
		got := appendInput(nil, req, new([]string))
		want := maskedInput(t, Input(req))
		var g, w any
		if err := decodeJSON(got, &g); err != nil {
			t.Fatalf("request %d: the log's input is not JSON: %v\n%s", i, err, got)
		}
		if err := decodeJSON(want, &w); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(w, g); diff != "" {
			t.Fatalf("request %d: (-Input +log)\n%s", i, diff)
		}
	}
}

// maskedInput is input as JSON with the masked values replaced, the way the
// masked list says.
func maskedInput(t *testing.T, input ast.Value) []byte {
	x, err := ast.JSON(input)
	if err != nil {
		t.Fatal(err)
	}
	m := x.(map[string]any)
	attrs, _ := m["attributes"].(map[string]any)
	request, _ := attrs["request"].(map[string]any)
	if h, ok := request["http"].(map[string]any); ok {
		if hs, ok := h["headers"].(map[string]any); ok {
			for _, k := range []string{"authorization", "proxy-authorization", "cookie"} {
				if _, ok := hs[k]; ok {
					hs[k] = maskedValue
				}
			}
			if p, ok := hs[":path"].(string); ok {
				hs[":path"] = maskTarget(p)
			}
		}
		if p, ok := h["path"].(string); ok {
			h["path"] = maskTarget(p)
		}
	}
	if q, ok := m["parsed_query"].(map[string]any); ok {
		if _, ok := q["access_token"]; ok {
			q["access_token"] = maskedValue
		}
	}
	bs, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

func decodeJSON(bs []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(bs))
	d.UseNumber()
	return d.Decode(v)
}
