package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
)

// normalizeDurations rewrites duration strings in Go notation ("500ms", "1m30s"),
// which Istio accepts, into the protobuf JSON form ("0.500s") that protojson reads.
// v is a decoded JSON value of message type md found at field path path; it is
// changed in place. A value that is a duration in neither form, or an enum value
// that is not one of the enum's names, or a string field given another type, is added
// to errs with its field path, which protojson's own error would not name.
func normalizeDurations(md protoreflect.MessageDescriptor, v any, path string, errs *[]error) {
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
		if fd == nil {
			continue
		}
		if checkEnums(fd, val, path+"."+key, errs) || checkStrings(fd, val, path+"."+key, errs) {
			continue
		}
		if fd.Message() == nil {
			continue
		}
		elem := fd.Message()
		if fd.IsMap() {
			elem = fd.MapValue().Message()
			if elem == nil {
				continue
			}
		}
		apply := func(field string, x any) any {
			if elem.FullName() == "google.protobuf.Duration" {
				d, err := normalizeDuration(x)
				if err != nil {
					*errs = append(*errs, fmt.Errorf("%s: %w", field, err))
				}
				return d
			}
			normalizeDurations(elem, x, field, errs)
			return x
		}
		field := path + "." + key
		switch {
		case fd.IsList():
			if list, ok := val.([]any); ok {
				for i := range list {
					list[i] = apply(fmt.Sprintf("%s[%d]", field, i), list[i])
				}
			}
		case fd.IsMap():
			if m, ok := val.(map[string]any); ok {
				for k := range m {
					m[k] = apply(fmt.Sprintf("%s[%s]", field, k), m[k])
				}
			}
		default:
			obj[key] = apply(field, val)
		}
	}
}

// normalizeDuration returns x in protobuf JSON form, or x unchanged with an error.
func normalizeDuration(x any) (any, error) {
	s, ok := x.(string)
	if !ok {
		if x == nil {
			return nil, nil // null leaves the field unset
		}
		return x, errors.New("a duration must be a string such as 1.5s or 500ms")
	}
	if d, err := time.ParseDuration(s); err == nil {
		js, err := protojson.Marshal(durationpb.New(d))
		if err != nil {
			return x, fmt.Errorf("duration %q is out of range", s)
		}
		return strconv.Unquote(string(js))
	}
	// Not Go notation: accept it only if it is already in protobuf form.
	js, err := json.Marshal(s)
	if err == nil {
		err = protojson.Unmarshal(js, new(durationpb.Duration))
	}
	if err != nil {
		return x, fmt.Errorf("%q is not a duration such as 1.5s or 500ms", s)
	}
	return s, nil
}

// checkEnums reports enum values of field fd (a single value, a list or a map's
// values) that name no value of the enum, and whether fd holds enums at all.
func checkEnums(fd protoreflect.FieldDescriptor, val any, field string, errs *[]error) bool {
	ed := fd.Enum()
	if fd.IsMap() {
		ed = fd.MapValue().Enum()
	}
	if ed == nil {
		return false
	}
	check := func(field string, x any) {
		var got string
		switch x := x.(type) {
		case nil, float64:
			return // null, or a number: protojson's and the validator's to judge
		case string:
			if ed.Values().ByName(protoreflect.Name(x)) != nil {
				return
			}
			got = strconv.Quote(x)
		default: // YAML reads an unquoted on/off/yes/no as a boolean
			got = fmt.Sprint(x)
		}
		names := make([]string, ed.Values().Len())
		for i := range names {
			names[i] = string(ed.Values().Get(i).Name())
		}
		*errs = append(*errs, fmt.Errorf("%s: unknown value %s (use one of %s)", field, got, strings.Join(names, ", ")))
	}
	switch {
	case fd.IsList():
		if list, ok := val.([]any); ok {
			for i, x := range list {
				check(fmt.Sprintf("%s[%d]", field, i), x)
			}
		}
	case fd.IsMap():
		if m, ok := val.(map[string]any); ok {
			for k, x := range m {
				check(fmt.Sprintf("%s[%s]", field, k), x)
			}
		}
	default:
		check(field, val)
	}
	return true
}

// checkStrings reports values of string field fd (a single value, a list or a map's
// values) that are not strings, such as a port written 8080 where the API takes
// "8080", and whether fd holds strings at all.
func checkStrings(fd protoreflect.FieldDescriptor, val any, field string, errs *[]error) bool {
	kind := fd.Kind()
	if fd.IsMap() {
		kind = fd.MapValue().Kind()
	}
	if kind != protoreflect.StringKind {
		return false
	}
	check := func(field string, x any) {
		switch x := x.(type) {
		case nil, string:
		case float64, bool: // YAML reads 8080 as a number, an unquoted yes/no as a boolean
			*errs = append(*errs, fmt.Errorf("%s: %v is not a string (quote it: \"%v\")", field, x, x))
		default:
			*errs = append(*errs, fmt.Errorf("%s: must be a string", field))
		}
	}
	switch {
	case fd.IsList():
		if list, ok := val.([]any); ok {
			for i, x := range list {
				check(fmt.Sprintf("%s[%d]", field, i), x)
			}
		}
	case fd.IsMap():
		if m, ok := val.(map[string]any); ok {
			for k, x := range m {
				check(fmt.Sprintf("%s[%s]", field, k), x)
			}
		}
	default:
		check(field, val)
	}
	return true
}
