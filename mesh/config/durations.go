package config

import (
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// normalizeDurations rewrites duration strings in Go notation ("500ms", "1m30s"),
// which Istio accepts, into the protobuf JSON form ("0.500s") that protojson reads.
// v is a decoded JSON value of message type md; it is changed in place.
func normalizeDurations(md protoreflect.MessageDescriptor, v any) {
	obj, ok := v.(map[string]any)
	if !ok {
		return
	}
	fields := md.Fields()
	for key, val := range obj {
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil || fd.Message() == nil {
			continue
		}
		elem := fd.Message()
		if fd.IsMap() {
			elem = fd.MapValue().Message()
			if elem == nil {
				continue
			}
		}
		apply := func(x any) any {
			if elem.FullName() == "google.protobuf.Duration" {
				return normalizeDuration(x)
			}
			normalizeDurations(elem, x)
			return x
		}
		switch {
		case fd.IsList():
			if list, ok := val.([]any); ok {
				for i := range list {
					list[i] = apply(list[i])
				}
			}
		case fd.IsMap():
			if m, ok := val.(map[string]any); ok {
				for k := range m {
					m[k] = apply(m[k])
				}
			}
		default:
			obj[key] = apply(val)
		}
	}
}

func normalizeDuration(x any) any {
	s, ok := x.(string)
	if !ok {
		return x
	}
	// Already in protobuf form: a decimal number of seconds.
	if n, found := strings.CutSuffix(s, "s"); found {
		if _, err := strconv.ParseFloat(n, 64); err == nil {
			return s
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return s // let protojson report it
	}
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}
