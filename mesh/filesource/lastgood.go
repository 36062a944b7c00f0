package filesource

import (
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// keepLastGood applies the keep-last-good rule (see the package documentation): it
// returns the objects to serve — objs, the result of the current load, plus the
// previously served version of every object whose document now fails — and a warning
// for each object kept that way. prev is what was served before; diags are the
// current load's diagnostics.
func keepLastGood(prev, objs []config.Object, diags []config.Diagnostic) ([]config.Object, []config.Diagnostic) {
	loaded := make(map[config.Key]bool, len(objs))
	for _, o := range objs {
		loaded[o.Key] = true
	}
	served := make(map[config.Key]bool, len(prev))
	for _, o := range prev {
		served[o.Key] = true
	}
	// An error naming a served object keeps that object. An error naming no served
	// object (broken YAML, missing or invalid name, unreadable file) has lost track of
	// which object the document held, so it keeps everything its file contributed.
	failedKeys := map[config.Key]bool{}
	var failedFiles []string
	for _, d := range diags {
		switch {
		case d.Severity != config.SeverityError:
		case served[d.Object]:
			failedKeys[d.Object] = true
		default:
			failedFiles = append(failedFiles, d.Source.File)
		}
	}
	objs = slices.Clip(objs) // appending must not write into the caller's array
	var warnings []config.Diagnostic
	for _, o := range prev {
		if loaded[o.Key] || !(failedKeys[o.Key] || inFailedFile(o.Source.File, failedFiles)) {
			continue
		}
		objs = append(objs, o)
		warnings = append(warnings, config.Diagnostic{
			Severity: config.SeverityWarning,
			Source:   o.Source,
			Object:   o.Key,
			Message:  "its document has errors, so the last valid version is still served",
		})
	}
	return objs, warnings
}

// inFailedFile reports whether file is one of failed, or lies in a failed directory
// (written with a trailing slash).
func inFailedFile(file string, failed []string) bool {
	for _, f := range failed {
		if f == file || (strings.HasSuffix(f, "/") && strings.HasPrefix(file, f)) {
			return true
		}
	}
	return false
}

// sameObjects reports whether a and b hold the same objects: same keys, labels and
// specs. Where an object was read from does not matter. Keys are unique in each.
func sameObjects(a, b []config.Object) bool {
	if len(a) != len(b) {
		return false
	}
	byKey := make(map[config.Key]config.Object, len(a))
	for _, o := range a {
		byKey[o.Key] = o
	}
	for _, o := range b {
		p, ok := byKey[o.Key]
		if !ok || !maps.Equal(p.Labels, o.Labels) || (p.Spec != o.Spec && !proto.Equal(p.Spec, o.Spec)) {
			return false
		}
	}
	return true
}
