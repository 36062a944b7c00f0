package authz

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
)

// DecisionLogConfig configures a DecisionLog.
type DecisionLogConfig struct {
	// Writer receives one JSON object per line, in OPA's decision log format.
	Writer io.Writer
	// Buffer is how many decisions may wait to be written (default 4096). When it
	// is full, decisions are dropped and counted rather than slowing requests.
	Buffer int
	// Labels go into every entry ("id" names the instance, "version" Palisade's
	// version), as OPA's do.
	Labels map[string]string
	// Path is the decision's path in the entry, e.g. "palisade/mesh/decision".
	Path string
	// Bundle names the bundle whose revision each entry records.
	Bundle string
	// OnDrop is called for every dropped decision (a metric).
	OnDrop func()
}

// DecisionLog writes decisions as JSON lines through a bounded buffer: Log never
// blocks a decision. Secrets in the input (Authorization, Proxy-Authorization and
// Cookie headers, the access_token query parameter) are masked.
type DecisionLog struct {
	cfg     DecisionLogConfig
	entries chan logEntry
	dropped atomic.Uint64
	done    chan struct{}
	once    sync.Once
	labels  []byte   // cfg.Labels as JSON
	keys    []string // the writer's scratch for sorting keys
}

// logEntry is what a decision hands to the writer: references only, encoded on the
// writer's goroutine. The request is not modified meanwhile (gRPC gives each call
// its own).
type logEntry struct {
	time     time.Time
	req      *authv3.CheckRequest
	result   any // the policy's decision, nil on failure or when the decision is the result
	decision Decision
	// native: the result is the decision's (Decision.result), made by a native
	// decision.
	native   bool
	revision string
	peer     string
	duration time.Duration
}

// NewDecisionLog starts the writer; Close stops it after writing what is buffered.
func NewDecisionLog(cfg DecisionLogConfig) *DecisionLog {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 4096
	}
	l := &DecisionLog{cfg: cfg, entries: make(chan logEntry, cfg.Buffer), done: make(chan struct{})}
	if len(cfg.Labels) > 0 {
		l.labels, _ = json.Marshal(cfg.Labels) // a map of strings always encodes
	}
	go l.run()
	return l
}

// Dropped returns how many decisions were not logged because the buffer was full.
func (l *DecisionLog) Dropped() uint64 { return l.dropped.Load() }

func (l *DecisionLog) log(e logEntry) {
	select {
	case l.entries <- e:
	default:
		l.dropped.Add(1)
		if l.cfg.OnDrop != nil {
			l.cfg.OnDrop()
		}
	}
}

// Close writes the buffered decisions and stops the writer. ctx bounds the wait.
func (l *DecisionLog) Close(ctx context.Context) error {
	l.once.Do(func() { close(l.entries) })
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flushDelay is how long a logged decision may wait in the writer's buffer for
// others to share its write (a full buffer is written at once).
const flushDelay = 20 * time.Millisecond

func (l *DecisionLog) run() {
	defer close(l.done)
	w := bufio.NewWriterSize(l.cfg.Writer, 64<<10)
	flush := time.NewTimer(flushDelay)
	flush.Stop()
	pending := false
	var buf []byte
	for {
		select {
		case e, ok := <-l.entries:
			if !ok {
				w.Flush()
				return
			}
			buf = l.encode(buf[:0], e)
			w.Write(buf)
			if !pending {
				flush.Reset(flushDelay)
				pending = true
			}
		case <-flush.C:
			w.Flush()
			pending = false
		}
	}
}

// masked are the input fields whose values are replaced, as JSON pointers. In the
// request target (path and :path) only the access_token parameter is replaced.
var masked = []string{
	"/input/attributes/request/http/headers/authorization",
	"/input/attributes/request/http/headers/proxy-authorization",
	"/input/attributes/request/http/headers/cookie",
	"/input/attributes/request/http/headers/:path",
	"/input/attributes/request/http/path",
	"/input/parsed_query/access_token",
}

// maskedValue replaces masked values.
const maskedValue = "**MASKED**"

// maskTarget replaces the access_token parameter's value in a request target.
func maskTarget(target string) string {
	path, query, ok := strings.Cut(target, "?")
	if !ok || !strings.Contains(query, "access_token=") {
		return target
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		if strings.HasPrefix(p, "access_token=") {
			params[i] = "access_token=" + maskedValue
		}
	}
	return path + "?" + strings.Join(params, "&")
}

func (l *DecisionLog) encode(b []byte, e logEntry) []byte {
	b = append(b, `{"decision_id":"`...)
	b = appendUUID(b)
	b = append(b, `","path":`...)
	b = appendString(b, l.cfg.Path)
	if len(l.labels) > 0 {
		b = append(b, `,"labels":`...)
		b = append(b, l.labels...)
	}
	if e.revision != "" && l.cfg.Bundle != "" {
		b = append(b, `,"bundles":{`...)
		b = appendString(b, l.cfg.Bundle)
		b = append(b, `:{"revision":`...)
		b = appendString(b, e.revision)
		b = append(b, `}}`...)
	}
	if e.peer != "" {
		b = append(b, `,"requested_by":`...)
		b = appendString(b, e.peer)
	}
	b = append(b, `,"timestamp":"`...)
	b = e.time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","input":`...)
	b = appendInput(b, e.req, &l.keys)
	switch {
	case e.native:
		b = append(b, `,"result":`...)
		b = appendDecision(b, e.decision)
	case e.result != nil:
		b = append(b, `,"result":`...)
		b = appendResult(b, e.result)
	default:
		b = append(b, `,"result":{"allowed":false,"reason":`...)
		b = appendString(b, e.decision.Reason)
		b = append(b, `},"error":{"code":`...)
		b = appendString(b, string(e.decision.Failure))
		b = append(b, `,"message":`...)
		b = appendString(b, e.decision.Reason)
		b = append(b, '}')
	}
	b = append(b, `,"metrics":{"timer_server_handler_ns":`...)
	b = strconv.AppendInt(b, e.duration.Nanoseconds(), 10)
	b = append(b, `},"masked":[`...)
	for i, m := range masked {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, m)
	}
	return append(b, "]}\n"...)
}

// appendValue appends v as JSON.
func appendValue(b []byte, v ast.Value) []byte {
	switch v := v.(type) {
	case ast.Null:
		return append(b, "null"...)
	case ast.Boolean:
		return strconv.AppendBool(b, bool(v))
	case ast.Number:
		return append(b, v...)
	case ast.String:
		return appendString(b, string(v))
	case *ast.Array:
		b = append(b, '[')
		for i := range v.Len() {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendValue(b, v.Elem(i).Value)
		}
		return append(b, ']')
	case ast.Set:
		b = append(b, '[')
		for i, t := range v.Slice() {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendValue(b, t.Value)
		}
		return append(b, ']')
	case ast.Object:
		// Keys and Get rather than Foreach: a closure appending to b would move b
		// and its state to the heap for every object.
		w := openObject(b)
		for _, k := range v.Keys() {
			key, ok := k.Value.(ast.String)
			if !ok {
				key = ast.String(k.Value.String())
			}
			w.key(string(key))
			w.b = appendValue(w.b, v.Get(k).Value)
		}
		return w.close()
	}
	return appendString(b, v.String())
}

// appendResult appends a decision as OPA returns it (map[string]any, []any,
// string, json.Number, bool, nil) as JSON, object keys sorted as encoding/json
// sorts them; anything else goes through encoding/json.
func appendResult(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, v)
	case string:
		return appendString(b, v)
	case json.Number:
		return append(b, v...)
	case []any:
		b = append(b, '[')
		for i, x := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendResult(b, x)
		}
		return append(b, ']')
	case map[string]any:
		var stack [8]string // the keys of a reason fit, and stay off the heap
		keys := stack[:0]
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		w := openObject(b)
		for _, k := range keys {
			w.key(k)
			w.b = appendResult(w.b, v[k])
		}
		return w.close()
	}
	bs, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, bs...)
}

// appendDecision appends a native decision's result (Decision.result), without
// building it.
func appendDecision(b []byte, d Decision) []byte {
	b = append(b, `{"allowed":`...)
	b = strconv.AppendBool(b, d.Allowed)
	b = append(b, `,"body":`...)
	b = appendString(b, d.Body)
	b = append(b, `,"headers":`...)
	w := openObject(b)
	for _, h := range d.Headers {
		w.key(h.Name)
		w.b = appendString(w.b, h.Value)
	}
	b = append(w.close(), `,"http_status":`...)
	b = strconv.AppendInt(b, int64(d.HTTPStatus), 10)
	b = append(b, `,"reason":`...)
	b = appendString(b, d.Reason)
	b = append(b, `,"reasons":[`...)
	for i, r := range d.Reasons {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendResult(b, r)
	}
	b = append(b, `],"request_headers_to_remove":[`...)
	for i, h := range d.RequestHeadersToRemove {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, h)
	}
	return append(b, `],"response_headers_to_add":{}}`...)
}

// appendString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		// Bytes that need no escaping are copied in one run.
		j := i
		for j < len(s) && s[j] >= 0x20 && s[j] < utf8.RuneSelf && s[j] != '"' && s[j] != '\\' {
			j++
		}
		b = append(b, s[i:j]...)
		if i = j; i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029': // escaped as encoding/json does
			b = append(b, `\u202`...)
			b = append(b, hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// appendUUID appends a random version 4 UUID, the form of OPA's decision IDs.
func appendUUID(b []byte) []byte {
	var u [16]byte
	binary.BigEndian.PutUint64(u[:8], rand.Uint64()&^0xf000|0x4000)     // version 4
	binary.BigEndian.PutUint64(u[8:], rand.Uint64()&^(0xc<<60)|0x8<<60) // RFC 4122 variant
	for i, group := range [][2]int{{0, 4}, {4, 6}, {6, 8}, {8, 10}, {10, 16}} {
		if i > 0 {
			b = append(b, '-')
		}
		b = hex.AppendEncode(b, u[group[0]:group[1]])
	}
	return b
}

// OpenDecisionLog starts a decision log writing to path ("-": standard output),
// appending to the file (created 0600: decisions describe requests). close writes
// what is buffered and closes the file.
func OpenDecisionLog(path string, cfg DecisionLogConfig) (_ *DecisionLog, close func(context.Context) error, err error) {
	var f *os.File
	cfg.Writer = os.Stdout
	if path != "-" {
		if f, err = os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err != nil {
			return nil, nil, err
		}
		cfg.Writer = f
	}
	l := NewDecisionLog(cfg)
	return l, func(ctx context.Context) error {
		err := l.Close(ctx)
		if f != nil {
			err = errors.Join(err, f.Close())
		}
		return err
	}, nil
}
