package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// /debug/syncz lists a connected proxyless client with the versions it acknowledged,
// and `palisadectl proxy-config NODE` prints the configuration that client gets.
func TestSynczAndProxyConfig(t *testing.T) {
	t.Parallel()
	m := startMesh(t, 80, 20)
	c := newClient(t, m.daemon, reviewsTarget)

	type typeStatus struct {
		TypeURL string `json:"type_url"`
		Sent    string `json:"sent_version"`
		Acked   string `json:"acked_version"`
		Nacked  string `json:"nacked_version"`
	}
	var mine struct {
		Node, Namespace, Kind, Protocol string
		Types                           []typeStatus
	}
	// The client has made a call, so every type was sent; its ACKs follow at once.
	err := poll(10*time.Second, func() bool {
		_, body, err := m.get("/debug/syncz")
		if err != nil {
			return false
		}
		var all []json.RawMessage
		if json.Unmarshal([]byte(body), &all) != nil {
			return false
		}
		for _, raw := range all {
			_ = json.Unmarshal(raw, &mine)
			if mine.Node != c.NodeID {
				continue
			}
			acked := 0
			for _, ts := range mine.Types {
				if ts.Sent != "" && ts.Acked == ts.Sent && ts.Nacked == "" {
					acked++
				}
			}
			return acked == 4
		}
		return false
	})
	if err != nil {
		_, body, _ := m.get("/debug/syncz")
		t.Fatalf("syncz does not show %s with 4 acknowledged types: %v\n%s", c.NodeID, err, body)
	}
	if mine.Namespace != "default" || mine.Kind != "proxyless" || mine.Protocol != "sotw" {
		t.Errorf("syncz identifies the client as %+v", mine)
	}

	out, err := exec.Command(ctlBin, "proxy-config", c.NodeID, "--monitoring-address", m.MonAddr, "--type", "routes").CombinedOutput()
	if err != nil {
		t.Fatalf("palisadectl proxy-config: %v\n%s", err, out)
	}
	var dump struct {
		Node      string
		Kind      string
		Resources map[string][]map[string]any
	}
	if err := yaml.Unmarshal(out, &dump); err != nil {
		t.Fatalf("proxy-config output is not YAML: %v\n%s", err, out)
	}
	routes := dump.Resources["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
	if dump.Node != c.NodeID || dump.Kind != "proxyless" || len(dump.Resources) != 1 || len(routes) == 0 {
		t.Fatalf("unexpected proxy-config output:\n%s", out)
	}
	if !strings.Contains(string(out), "outbound|9080|v2|reviews.default.svc.cluster.local") || !strings.Contains(string(out), "weight: 20") {
		t.Errorf("the reviews route with its 80/20 split is missing:\n%s", out)
	}
	out, err = exec.Command(ctlBin, "proxy-config", "no-such-node", "--monitoring-address", m.MonAddr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no connected proxy has node ID "no-such-node"`) {
		t.Errorf("unknown node: err %v, output %s", err, out)
	}
}
