package xds

import (
	"slices"
	"testing"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/mesh"
)

// The context extensions the sidecars send are those the ext_authz server reads, and
// the labels are encoded as it decodes them (xds does not import authz, which links
// OPA's evaluator).
func TestExtAuthzNamesMatchAuthz(t *testing.T) {
	if extensionWorkloadNamespace != authz.ExtensionWorkloadNamespace {
		t.Errorf("namespace extension %q, authz reads %q", extensionWorkloadNamespace, authz.ExtensionWorkloadNamespace)
	}
	if extensionWorkloadLabels != authz.ExtensionWorkloadLabels {
		t.Errorf("labels extension %q, authz reads %q", extensionWorkloadLabels, authz.ExtensionWorkloadLabels)
	}
	for _, labels := range []map[string]string{
		nil,
		{"app": "reviews"},
		{"version": "v1", "app": "reviews", mesh.TLSModeLabel: mesh.TLSModeIstio, "a.b/c": ""},
	} {
		keys := mesh.SortedKeys(labels)
		if !slices.IsSorted(keys) {
			t.Fatal("SortedKeys does not sort")
		}
		if got, want := encodeLabels(labels), authz.EncodeLabels(keys, labels); got != want {
			t.Errorf("encodeLabels(%v) = %q, authz.EncodeLabels = %q", labels, got, want)
		}
	}
}
