package filesource

import (
	"slices"
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/palisade-mesh/palisade/mesh/config"
)

func object(name, file string, index int, host string) config.Object {
	return config.Object{
		Key:    key(config.KindDestinationRule, "ns", name),
		Source: config.Source{File: file, Index: index},
		Spec:   &networking.DestinationRule{Host: host},
	}
}

func diagnostic(sev config.Severity, file string, index int, name string) config.Diagnostic {
	d := config.Diagnostic{Severity: sev, Source: config.Source{File: file, Index: index}, Message: "bad"}
	if name != "" {
		d.Object = key(config.KindDestinationRule, "ns", name)
	}
	return d
}

func TestKeepLastGood(t *testing.T) {
	prev := []config.Object{
		object("a", "f.yaml", 0, "old"),
		object("b", "f.yaml", 1, "old"),
		object("c", "g.yaml", 0, "old"),
		object("d", "sub/h.yaml", 0, "old"),
		object("e", "subway.yaml", 0, "old"),
	}
	// The current load when nothing is wrong: a changed, b and d gone.
	loaded := []config.Object{object("a", "f.yaml", 0, "new"), object("c", "g.yaml", 0, "old"), object("e", "subway.yaml", 0, "old")}
	tests := []struct {
		name  string
		diags []config.Diagnostic
		want  string // served objects as name:host, sorted
	}{
		{"deliberate removal", nil, "a:new c:old e:old"},
		{"error names the object", []config.Diagnostic{diagnostic(config.SeverityError, "f.yaml", 1, "b")}, "a:new b:old c:old e:old"},
		{"error names it from another file", []config.Diagnostic{diagnostic(config.SeverityError, "moved.yaml", 0, "b")}, "a:new b:old c:old e:old"},
		{"warnings keep nothing", []config.Diagnostic{diagnostic(config.SeverityWarning, "f.yaml", 1, "b")}, "a:new c:old e:old"},
		{"unidentified document keeps its file's objects", []config.Diagnostic{diagnostic(config.SeverityError, "f.yaml", 1, "")}, "a:new b:old c:old e:old"},
		{"new name counts as unidentified", []config.Diagnostic{diagnostic(config.SeverityError, "f.yaml", 1, "B")}, "a:new b:old c:old e:old"},
		{"other file's error keeps nothing here", []config.Diagnostic{diagnostic(config.SeverityError, "g.yaml", 1, "")}, "a:new c:old e:old"},
		{"unreadable directory keeps the files in it", []config.Diagnostic{diagnostic(config.SeverityError, "sub/", 0, "")}, "a:new c:old d:old e:old"},
		{"loaded version wins", []config.Diagnostic{diagnostic(config.SeverityError, "f.yaml", 2, "a")}, "a:new c:old e:old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			served, warnings := keepLastGood(prev, slices.Clone(loaded), tt.diags)
			var got []string
			for _, o := range served {
				got = append(got, o.Name+":"+o.Spec.(*networking.DestinationRule).Host)
			}
			slices.Sort(got)
			if strings.Join(got, " ") != tt.want {
				t.Errorf("served %v, want %s", got, tt.want)
			}
			if kept := len(served) - len(loaded); len(warnings) != kept {
				t.Errorf("got %d warnings for %d kept objects: %v", len(warnings), kept, warnings)
			}
			for _, w := range warnings {
				if w.Severity != config.SeverityWarning || !strings.Contains(w.Message, "last valid version") {
					t.Errorf("warning %v does not say the last valid version is served", w)
				}
			}
		})
	}
}

func TestSameObjects(t *testing.T) {
	base := []config.Object{object("a", "f.yaml", 0, "h"), object("b", "f.yaml", 1, "h")}
	moved := []config.Object{object("b", "g.yaml", 0, "h"), object("a", "g.yaml", 1, "h")}
	labeled := slices.Clone(base)
	labeled[0].Labels = map[string]string{"app": "a"}
	tests := []struct {
		name  string
		other []config.Object
		want  bool
	}{
		{"same, read elsewhere and in another order", moved, true},
		{"spec changed", []config.Object{object("a", "f.yaml", 0, "h"), object("b", "f.yaml", 1, "other")}, false},
		{"labels changed", labeled, false},
		{"object renamed", []config.Object{object("a", "f.yaml", 0, "h"), object("c", "f.yaml", 1, "h")}, false},
		{"object removed", base[:1], false},
	}
	for _, tt := range tests {
		if got := sameObjects(base, tt.other); got != tt.want {
			t.Errorf("%s: sameObjects = %v, want %v", tt.name, got, tt.want)
		}
	}
}
