// Package config decodes and validates the configuration objects Palisade accepts:
// Istio's networking.istio.io/v1 kinds, the security.istio.io/v1 kinds
// PeerAuthentication, AuthorizationPolicy and RequestAuthentication, and Palisade's
// own policy.palisade.dev/v1alpha1 RegoPolicy. It is shared by every config source
// and by `palisadectl analyze`, so that a file, the Kubernetes API and the CLI agree
// on what is valid.
package config

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/palisade-mesh/palisade/mesh/config/policypb"
)

// Kind names a supported object kind.
type Kind string

// The kinds Palisade reads: those of the networking.istio.io group (v1, v1beta1 and
// v1alpha3 are accepted since they share one schema), PeerAuthentication,
// AuthorizationPolicy and RequestAuthentication of the security.istio.io group (v1
// and v1beta1), and RegoPolicy of Palisade's policy.palisade.dev group (v1alpha1).
const (
	KindServiceEntry          Kind = "ServiceEntry"
	KindWorkloadEntry         Kind = "WorkloadEntry"
	KindVirtualService        Kind = "VirtualService"
	KindDestinationRule       Kind = "DestinationRule"
	KindPeerAuthentication    Kind = "PeerAuthentication"
	KindAuthorizationPolicy   Kind = "AuthorizationPolicy"
	KindRequestAuthentication Kind = "RequestAuthentication"
	KindRegoPolicy            Kind = "RegoPolicy"
)

// The API groups of the supported kinds.
const (
	NetworkingGroup = "networking.istio.io"
	SecurityGroup   = "security.istio.io"
	PolicyGroup     = "policy.palisade.dev"
)

// kindInfo says which group a kind belongs to and which versions of it are read.
type kindInfo struct {
	group    string
	versions []string
}

var kinds = map[Kind]kindInfo{
	KindServiceEntry:          {NetworkingGroup, networkingVersions},
	KindWorkloadEntry:         {NetworkingGroup, networkingVersions},
	KindVirtualService:        {NetworkingGroup, networkingVersions},
	KindDestinationRule:       {NetworkingGroup, networkingVersions},
	KindPeerAuthentication:    {SecurityGroup, securityVersions},
	KindAuthorizationPolicy:   {SecurityGroup, securityVersions},
	KindRequestAuthentication: {SecurityGroup, securityVersions},
	KindRegoPolicy:            {PolicyGroup, []string{"v1alpha1"}},
}

var (
	networkingVersions = []string{"v1", "v1beta1", "v1alpha3"}
	securityVersions   = []string{"v1", "v1beta1"}
)

// newSpec returns an empty spec message for a kind, or nil for an unsupported kind.
func newSpec(k Kind) proto.Message {
	switch k {
	case KindServiceEntry:
		return &networking.ServiceEntry{}
	case KindWorkloadEntry:
		return &networking.WorkloadEntry{}
	case KindVirtualService:
		return &networking.VirtualService{}
	case KindDestinationRule:
		return &networking.DestinationRule{}
	case KindPeerAuthentication:
		return &security.PeerAuthentication{}
	case KindAuthorizationPolicy:
		return &security.AuthorizationPolicy{}
	case KindRequestAuthentication:
		return &security.RequestAuthentication{}
	case KindRegoPolicy:
		return &policypb.RegoPolicy{}
	}
	return nil
}

// Key identifies an object: two objects with the same key are versions of one object.
type Key struct {
	Kind      Kind
	Namespace string
	Name      string
}

func (k Key) String() string {
	switch {
	case k.Kind == "" && k.Name == "":
		return "(unidentified object)"
	case k.Namespace == "":
		return fmt.Sprintf("%s %s", k.Kind, k.Name)
	}
	return fmt.Sprintf("%s %s/%s", k.Kind, k.Namespace, k.Name)
}

// Source says where an object was read from.
type Source struct {
	File  string // path of the file, relative to the config directory when known
	Index int    // 0-based index of the YAML document within the file
}

func (s Source) String() string {
	if s.File == "" {
		return ""
	}
	return fmt.Sprintf("%s[doc %d]", s.File, s.Index)
}

// Object is one decoded, validated configuration object. Objects are immutable once
// decoded: nothing may modify Spec or Labels.
type Object struct {
	Key
	Labels map[string]string
	Source Source
	// Spec is one of *networking.ServiceEntry, *networking.WorkloadEntry,
	// *networking.VirtualService, *networking.DestinationRule,
	// *security.PeerAuthentication, *security.AuthorizationPolicy,
	// *security.RequestAuthentication and *policypb.RegoPolicy, by Kind.
	Spec proto.Message
}

// Severity of a diagnostic.
type Severity string

const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Diagnostic reports a problem with one object or document.
type Diagnostic struct {
	Severity Severity
	Source   Source
	Object   Key
	Message  string
}

func (d Diagnostic) String() string {
	loc := d.Source.String()
	if loc != "" {
		loc += " "
	}
	return fmt.Sprintf("%s: %s%s: %s", d.Severity, loc, d.Object, d.Message)
}
