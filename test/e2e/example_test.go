package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// examplePorts are the backend ports examples/mesh names, by WorkloadEntry.
var examplePorts = []struct {
	port    int
	service string
	version string
}{
	{9081, "productpage", "v1"},
	{9082, "details", "v1"},
	{9083, "reviews", "v1"},
	{9084, "reviews", "v2"},
	{9085, "ratings", "v1"},
}

// The example mesh the README and the demo use is valid and routes as its comments
// say. Its files are served unchanged except for the backend ports, which are moved
// to free ones so the test cannot clash with a demo running on the same machine.
func TestExampleMesh(t *testing.T) {
	t.Parallel()
	src := filepath.Join(moduleRoot, "examples", "mesh")
	files, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no YAML in %s: %v", src, err)
	}
	replacements := []string{}
	backends := map[string]int{} // "reviews/v2" → free port
	for _, e := range examplePorts {
		b := startBackend(t, e.service+"-"+e.version)
		backends[e.service+"/"+e.version] = b.Port()
		replacements = append(replacements, "grpc: "+strconv.Itoa(e.port), "grpc: "+strconv.Itoa(b.Port()))
	}
	ports := strings.NewReplacer(replacements...)
	dir := t.TempDir()
	found := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		moved := ports.Replace(string(data))
		for _, e := range examplePorts {
			if strings.Contains(string(data), "grpc: "+strconv.Itoa(e.port)) {
				found++
			}
		}
		writeFile(t, dir, filepath.Base(f), moved)
	}
	if found != len(examplePorts) {
		t.Fatalf("examples/mesh names %d of the %d backend ports the demo runs (%v); keep examplePorts, examples/demo/run.sh and the YAML in step", found, len(examplePorts), examplePorts)
	}

	d := startPalisaded(t, dir)
	if v, ok := d.Metric(t, "palisade_config_invalid_documents"); !ok || v != 0 {
		t.Errorf("palisade_config_invalid_documents = %v (present: %v) for examples/mesh, want 0", v, ok)
	}

	for _, svc := range []string{"productpage", "details", "ratings"} {
		c := newClient(t, d, "xds:///"+svc+".default.svc.cluster.local:9080")
		if tally := c.calls(10, nil); tally.Errors != 0 || tally.Versions[svc+"-v1"] != 10 {
			t.Errorf("%s: want 10 calls answered by %s-v1, have %s", svc, svc, tally)
		}
	}
	c := newClient(t, d, reviewsTarget)
	tally := c.calls(splitCalls, nil)
	t.Logf("examples/mesh reviews split: %s", tally)
	checkSplit(t, tally.Versions["reviews-v1"], tally.Versions["reviews-v2"], tally.Errors)
	if j := c.calls(100, jason); j.Errors != 0 || j.Versions["reviews-v2"] != 100 {
		t.Errorf("examples/mesh, end-user: jason: want 100 calls answered by reviews-v2, have %s", j)
	}
}
