package e2e

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

var jason = map[string]string{"end-user": "jason"}

// Tolerance of the 80/20 split over splitCalls calls. Each call picks v1 with
// probability 0.8 independently (grpc-go's weighted_clusters pick is random), so the
// number of v1 answers is Binomial(1000, 0.8): mean 800, σ = √(1000·0.8·0.2) ≈ 12.6.
// Accepting 800 ± 51 (≈ 4σ) makes a false failure about 1 in 15,000 runs, while a
// wrong split (e.g. 50/50, or 70/30 at -100) is far outside the band.
const (
	splitCalls     = 1000
	splitWantV1    = 800
	splitTolerance = 51
)

func checkSplit(t *testing.T, v1, v2, errs int) {
	t.Helper()
	if errs != 0 || v1+v2 != splitCalls {
		t.Errorf("want %d successful calls, have v1=%d v2=%d errors=%d", splitCalls, v1, v2, errs)
	}
	if v1 < splitWantV1-splitTolerance || v1 > splitWantV1+splitTolerance {
		t.Errorf("80/20 split: v1 answered %d of %d calls, want %d±%d (v2: %d)", v1, splitCalls, splitWantV1, splitTolerance, v2)
	}
	if v2 < splitCalls-splitWantV1-splitTolerance || v2 > splitCalls-splitWantV1+splitTolerance {
		t.Errorf("80/20 split: v2 answered %d of %d calls, want %d±%d", v2, splitCalls, splitCalls-splitWantV1, splitTolerance)
	}
}

// An 80/20 VirtualService over DestinationRule subsets v1/v2 splits calls 80/20.
func TestWeightedSplit(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 80, 20)
	c := newClient(t, m.daemon, reviewsTarget)
	tally := c.calls(splitCalls, nil)
	t.Logf("80/20 split over %d calls: %s", splitCalls, tally)
	checkSplit(t, tally.Versions["v1"], tally.Versions["v2"], tally.Errors)
	if t.Failed() {
		t.Logf("config_dump:\n%s", m.ConfigDump(c.NodeID))
	}
}

// A request with "end-user: jason" always reaches v2, whatever the split says.
func TestHeaderMatch(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 80, 20)
	c := newClient(t, m.daemon, reviewsTarget)
	tally := c.calls(100, jason)
	if tally.Errors != 0 || tally.Versions["v2"] != 100 {
		t.Fatalf("end-user: jason: want 100 calls answered by v2, have %s\nconfig_dump:\n%s", tally, m.ConfigDump(c.NodeID))
	}
	// Another user still gets the split, so the match is on the header's value and
	// not just on any call: with 100 calls at 80/20, P(no v1 at all) = 0.2^100.
	other := c.calls(100, map[string]string{"end-user": "bob"})
	if other.Errors != 0 || other.Versions["v1"] == 0 {
		t.Fatalf("end-user: bob: want the 80/20 split (some v1), have %s", other)
	}
}

// Rewriting the routing file to 0/100 moves all traffic to v2 within seconds, without
// restarting palisaded or the client.
func TestLiveChange(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 80, 20)
	c := newClient(t, m.daemon, reviewsTarget)
	before := c.calls(100, nil)
	if before.Errors != 0 || before.Versions["v1"] == 0 {
		t.Fatalf("before the change: want the 80/20 split (some v1), have %s", before)
	}

	m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(0, 100))
	took := c.waitAll("v2", nil, 10*time.Second)
	t.Logf("0/100 took effect within %v", took.Round(time.Millisecond))
	after := c.calls(300, nil)
	if after.Errors != 0 || after.Versions["v2"] != 300 {
		t.Fatalf("after the change to 0/100: want 300 calls answered by v2, have %s\nconfig_dump:\n%s", after, m.ConfigDump(c.NodeID))
	}

	// And back to 100/0: the change works both ways.
	m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(100, 0))
	c.waitAll("v1", nil, 10*time.Second)
}

// A broken file leaves traffic exactly as it was, and palisaded reports it in the
// palisade_config_invalid_documents metric. Two kinds of broken: a file that is not
// YAML, and a VirtualService that does not validate (a bad regular expression).
func TestBrokenConfigKeepsTraffic(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 0, 100)
	c := newClient(t, m.daemon, reviewsTarget)
	// 0/100 is a state a fallback would visibly break: without the VirtualService,
	// calls would be spread over v1 and v2.
	c.waitAll("v2", nil, 10*time.Second)
	if v, ok := m.Metric(t, "palisade_config_invalid_documents"); !ok || v != 0 {
		t.Fatalf("palisade_config_invalid_documents = %v (present: %v) with a valid config, want 0", v, ok)
	}

	good := m.Resources(t, c.NodeID)
	assertStillV2 := func(what string) {
		t.Helper()
		// What palisaded serves is unchanged...
		if now := m.Resources(t, c.NodeID); !reflect.DeepEqual(now, good) {
			t.Errorf("after %s, config_dump differs from the last good config:\nbefore: %v\nnow:    %v", what, good, now)
		}
		// ...and so is what the data plane does.
		tally := c.calls(300, nil)
		if tally.Errors != 0 || tally.Versions["v2"] != 300 {
			t.Fatalf("after %s: want traffic as before (300 calls answered by v2), have %s\nconfig_dump:\n%s",
				what, tally, m.ConfigDump(c.NodeID))
		}
	}

	t.Run("invalid YAML", func(t *testing.T) {
		m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(0, 100)+"---\nkind: VirtualService\n  spec: [unclosed\n\t:\n")
		m.waitMetric(t, "palisade_config_invalid_documents", "> 0", func(v float64) bool { return v > 0 })
		assertStillV2("writing invalid YAML")

		// A whole file of garbage, replacing the routing rules: the last good
		// version of the objects it held keeps being served.
		m.writeConfigFile(t, "reviews-routing.yaml", "this: is: not: yaml: [\n")
		m.waitMetric(t, "palisade_config_invalid_documents", "> 0", func(v float64) bool { return v > 0 })
		assertStillV2("replacing the routing file with invalid YAML")
	})

	t.Run("fixed", func(t *testing.T) {
		m.writeConfigFile(t, "reviews-routing.yaml", routingYAML(0, 100))
		m.waitMetric(t, "palisade_config_invalid_documents", "0 once the file is fixed", func(v float64) bool { return v == 0 })
		assertStillV2("fixing the file")
	})

	t.Run("invalid VirtualService", func(t *testing.T) {
		badVS := strings.Replace(routingYAML(50, 50), "end-user: {exact: jason}", `end-user: {regex: "(unclosed"}`, 1)
		if badVS == routingYAML(50, 50) {
			t.Fatal("test bug: regex not substituted")
		}
		// The broken VirtualService also asks for 50/50: if palisaded served any
		// part of it, v1 would show up.
		m.writeConfigFile(t, "reviews-routing.yaml", badVS)
		m.waitMetric(t, "palisade_config_invalid_documents", "> 0", func(v float64) bool { return v > 0 })
		assertStillV2("writing a VirtualService with an invalid regex")
		if out := m.Output(); !strings.Contains(out, "reviews-routing.yaml") {
			t.Errorf("palisaded's log does not name the broken file reviews-routing.yaml")
		}
		_, diags, err := m.get("/debug/diagnostics")
		if err != nil || !strings.Contains(diags, "reviews-routing.yaml[doc 1] VirtualService default/reviews") || !strings.Contains(diags, "invalid regular expression") {
			t.Errorf("/debug/diagnostics does not report the broken VirtualService (err %v):\n%s", err, diags)
		}
	})
}

// A VirtualService destination naming a subset no DestinationRule defines is reported
// and left out; the other destinations keep working.
func TestUnknownSubset(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 80, 20)
	c := newClient(t, m.daemon, reviewsTarget)

	vs := strings.Replace(routingYAML(50, 50), "{host: reviews, subset: v2}\n      weight: 50", "{host: reviews, subset: v3}\n      weight: 50", 1)
	if !strings.Contains(vs, "subset: v3") {
		t.Fatal("test bug: subset v3 not substituted")
	}
	m.writeConfigFile(t, "reviews-routing.yaml", vs)
	c.waitAll("v1", nil, 10*time.Second)
	tally := c.calls(300, nil)
	if tally.Errors != 0 || tally.Versions["v1"] != 300 {
		t.Fatalf("with subset v3 unknown: want all 300 calls answered by v1 (the remaining destination), have %s\nconfig_dump:\n%s",
			tally, m.ConfigDump(c.NodeID))
	}
	// The jason route (subset v2, which exists) is untouched.
	if j := c.calls(50, jason); j.Errors != 0 || j.Versions["v2"] != 50 {
		t.Fatalf("end-user: jason with subset v3 unknown elsewhere: want 50 calls answered by v2, have %s", j)
	}
	reported := func() bool {
		for _, line := range strings.Split(m.Output(), "\n") {
			if strings.Contains(line, "subset") && strings.Contains(line, "v3") {
				return true
			}
		}
		return false
	}
	if err := poll(10*time.Second, reported); err != nil {
		t.Errorf("palisaded's log never reported the unknown subset v3: %v", err)
	}
}
