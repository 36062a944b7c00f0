package rego

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

type bundleResponse struct {
	status      int
	body        []byte
	etag        string
	contentType string
	header      http.Header
}

func bundleRequest(t testing.TB, h http.Handler, method, path string, header map[string]string) bundleResponse {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	return bundleResponse{status: res.StatusCode, body: body, etag: res.Header.Get("ETag"), contentType: res.Header.Get("Content-Type"), header: res.Header}
}

func mustSet(t testing.TB, s *BundleServer, name string, tarball []byte, rev string) {
	t.Helper()
	if err := s.Set(name, tarball, rev); err != nil {
		t.Fatalf("Set: %v", err)
	}
}

func TestBundleServer(t *testing.T) {
	s := NewBundleServer()
	if r := bundleRequest(t, s, "GET", "/bundles/palisade", nil); r.status != http.StatusNotFound {
		t.Errorf("before Set: status %d, want 404", r.status)
	}
	v1, rev1 := mustBuild(t, testBundleContents("alice"), nil)
	mustSet(t, s, "palisade", v1, rev1)

	for _, path := range []string{"/bundles/palisade", "/bundles/palisade.tar.gz"} {
		r := bundleRequest(t, s, "GET", path, nil)
		if r.status != http.StatusOK || !bytes.Equal(r.body, v1) {
			t.Errorf("GET %s: status %d, %d bytes; want 200 and the bundle", path, r.status, len(r.body))
		}
		if r.etag != `"`+rev1+`"` || r.contentType != BundleContentType {
			t.Errorf("GET %s: ETag %s, Content-Type %s", path, r.etag, r.contentType)
		}
	}
	if r := bundleRequest(t, s, "HEAD", "/bundles/palisade", nil); r.status != http.StatusOK || len(r.body) != 0 || r.header.Get("Content-Length") != strconv.Itoa(len(v1)) {
		t.Errorf("HEAD: status %d, %d bytes body, Content-Length %s", r.status, len(r.body), r.header.Get("Content-Length"))
	}
	for _, path := range []string{"/bundles/other", "/bundles/", "/bundles/palisade/x", "/other/palisade"} {
		if r := bundleRequest(t, s, "GET", path, nil); r.status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, r.status)
		}
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		if r := bundleRequest(t, s, m, "/bundles/palisade", nil); r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: status %d Allow %q, want 405 GET, HEAD", m, r.status, r.header.Get("Allow"))
		}
	}

	// Conditional requests: OPA echoes the quoted ETag, possibly with the
	// superseded ones after it.
	for inm, want := range map[string]int{
		`"` + rev1 + `"`:                  http.StatusNotModified,
		rev1:                              http.StatusNotModified,
		`W/"` + rev1 + `"`:                http.StatusNotModified,
		`"old", "` + rev1 + `"`:           http.StatusNotModified,
		`*`:                               http.StatusNotModified,
		`"old"`:                           http.StatusOK,
		`"` + rev1[:10] + `"`:             http.StatusOK,
		`"` + rev1 + `x"`:                 http.StatusOK,
		``:                                http.StatusOK,
		`"` + strings.ToUpper(rev1) + `"`: http.StatusOK,
	} {
		r := bundleRequest(t, s, "GET", "/bundles/palisade", map[string]string{"If-None-Match": inm})
		if r.status != want {
			t.Errorf("If-None-Match %s: status %d, want %d", inm, r.status, want)
		}
		if want == http.StatusNotModified && (len(r.body) != 0 || r.etag != `"`+rev1+`"`) {
			t.Errorf("If-None-Match %s: 304 with %d bytes, ETag %s", inm, len(r.body), r.etag)
		}
	}

	// A swap is visible to the next request; the old ETag no longer matches.
	v2, rev2 := mustBuild(t, testBundleContents("bob"), nil)
	mustSet(t, s, "palisade", v2, rev2)
	r := bundleRequest(t, s, "GET", "/bundles/palisade", map[string]string{"If-None-Match": `"` + rev1 + `"`})
	if r.status != http.StatusOK || !bytes.Equal(r.body, v2) || r.etag != `"`+rev2+`"` {
		t.Errorf("after swap: status %d, ETag %s, new bytes %v", r.status, r.etag, bytes.Equal(r.body, v2))
	}
	// Other names are independent.
	mustSet(t, s, "extra", v1, rev1)
	if r := bundleRequest(t, s, "GET", "/bundles/extra", nil); r.etag != `"`+rev1+`"` {
		t.Errorf("second bundle: ETag %s", r.etag)
	}
	if r := bundleRequest(t, s, "GET", "/bundles/palisade", nil); r.etag != `"`+rev2+`"` {
		t.Errorf("first bundle after second Set: ETag %s", r.etag)
	}

	for _, bad := range [][2]string{{"", rev1}, {"a/b", rev1}, {"x.tar.gz", rev1}, {"../x", rev1}, {"ok", ""}, {"ok", `a"b`}, {"ok", "a b"}, {"ok", "a,b"}} {
		if err := s.Set(bad[0], v1, bad[1]); err == nil {
			t.Errorf("Set(%q, _, %q) accepted", bad[0], bad[1])
		}
	}
}

// startLongPoll sends a long-poll request in the background.
func startLongPoll(t testing.TB, url, etag string, wait string) <-chan bundleResponse {
	t.Helper()
	out := make(chan bundleResponse, 1)
	go func() {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("If-None-Match", etag)
		req.Header.Set("Prefer", "modes=snapshot,delta;wait="+wait)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- bundleResponse{status: -1, body: []byte(err.Error())}
			return
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		out <- bundleResponse{status: res.StatusCode, body: body, etag: res.Header.Get("ETag"), contentType: res.Header.Get("Content-Type"), header: res.Header}
	}()
	return out
}

func TestBundleServerLongPoll(t *testing.T) {
	s := NewBundleServer()
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	url := hs.URL + "/bundles/palisade"
	v1, rev1 := mustBuild(t, testBundleContents("alice"), nil)
	v2, rev2 := mustBuild(t, testBundleContents("bob"), nil)
	mustSet(t, s, "palisade", v1, rev1)

	// A changed bundle answers the held request at once.
	start := time.Now()
	pending := startLongPoll(t, url, `"`+rev1+`"`, "30")
	select {
	case r := <-pending:
		t.Fatalf("long poll answered before any change: %d", r.status)
	case <-time.After(200 * time.Millisecond):
	}
	mustSet(t, s, "palisade", v1, rev1) // same revision: no wake-up
	select {
	case r := <-pending:
		t.Fatalf("long poll answered on a Set of the same revision: %d", r.status)
	case <-time.After(100 * time.Millisecond):
	}
	mustSet(t, s, "palisade", v2, rev2)
	select {
	case r := <-pending:
		if r.status != http.StatusOK || !bytes.Equal(r.body, v2) || r.etag != `"`+rev2+`"` || r.contentType != BundleLongPollContentType || r.header.Get("Preference-Applied") != "wait=30" {
			t.Errorf("long poll: status %d ETag %s Content-Type %s Preference-Applied %q new bytes %v", r.status, r.etag, r.contentType, r.header.Get("Preference-Applied"), bytes.Equal(r.body, v2))
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("long poll took %v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll not answered after the bundle changed")
	}

	// A stale ETag is answered at once, even when long polling.
	select {
	case r := <-startLongPoll(t, url, `"`+rev1+`"`, "30"):
		if r.status != http.StatusOK || r.etag != `"`+rev2+`"` {
			t.Errorf("stale long poll: status %d ETag %s", r.status, r.etag)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stale long poll held")
	}

	// No change: 304 after the wait.
	start = time.Now()
	select {
	case r := <-startLongPoll(t, url, `"`+rev2+`"`, "1"):
		d := time.Since(start)
		if r.status != http.StatusNotModified || r.header.Get("Preference-Applied") != "wait=1" || d < 900*time.Millisecond {
			t.Errorf("timed-out long poll: status %d Preference-Applied %q after %v", r.status, r.header.Get("Preference-Applied"), d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll held past its wait")
	}

	// Close answers pending long polls and stops holding new ones; it then
	// no longer claims long polling, so clients fall back to polling.
	pending = startLongPoll(t, url, `"`+rev2+`"`, "30")
	time.Sleep(100 * time.Millisecond)
	s.Close()
	select {
	case r := <-pending:
		if r.status != http.StatusNotModified {
			t.Errorf("long poll at Close: status %d", r.status)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not answer the pending long poll")
	}
	select {
	case r := <-startLongPoll(t, url, `"`+rev2+`"`, "30"):
		if r.status != http.StatusNotModified || r.header.Get("Preference-Applied") != "" {
			t.Errorf("long poll after Close: status %d Preference-Applied %q", r.status, r.header.Get("Preference-Applied"))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long poll held after Close")
	}
}

func TestPreferWait(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"wait=10":                     10 * time.Second,
		"modes=snapshot,delta;wait=3": 3 * time.Second,
		"respond-async, wait=5":       5 * time.Second,
		`WAIT="7"`:                    7 * time.Second,
		"wait=100000000000000":        BundleMaxLongPoll,
		"wait=0":                      0,
		"wait=-1":                     0,
		"wait=x":                      0,
		"modes=snapshot":              0,
		"":                            0,
	} {
		got, ok := preferWait([]string{in})
		if got != want || ok != (want > 0) {
			t.Errorf("preferWait(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
}
