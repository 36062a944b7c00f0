package xds

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Validate checks a generated resource with go-control-plane's ValidateAll and, since
// ValidateAll stops at Any fields, unpacks every Any (filters, transport sockets,
// protocol options) and validates what it holds, recursively. An Any of a type that
// is not linked into the binary is an error: Envoy would reject it too.
func Validate(m proto.Message) error {
	var errs []error
	validateMessage(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name()), &errs)
	return errors.Join(errs...)
}

type allValidator interface{ ValidateAll() error }

func validateMessage(m protoreflect.Message, path string, errs *[]error) {
	if v, ok := m.Interface().(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	walkAnys(m, path, errs)
}

// walkAnys finds Any fields below m and validates their contents.
func walkAnys(m protoreflect.Message, path string, errs *[]error) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: unpacking %s: %w", path, a.GetTypeUrl(), err))
			return
		}
		validateMessage(inner.ProtoReflect(), path+"<"+string(inner.ProtoReflect().Descriptor().Name())+">", errs)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkAnys(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), errs)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					walkAnys(mv.Message(), fmt.Sprintf("%s[%s]", name, k.String()), errs)
					return true
				})
			}
		default:
			walkAnys(v.Message(), name, errs)
		}
		return true
	})
}

// ValidateResources validates every resource; the error names each failing one.
func ValidateResources(r *Resources) error {
	var errs []error
	for _, typeURL := range TypeURLs {
		for _, res := range r.ByType(typeURL) {
			if err := Validate(res); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
