package webhook

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"
)

// patchOp is one RFC 6902 JSON patch operation. Only "add" is used: on an object
// member that exists it replaces the value, so one op sets a whole array or map
// whether the pod has it or not.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// podArrays are the parts of a pod's JSON that the injection extends, kept as the
// API server sent them: the pod's own entries go back unchanged, including fields
// this build's k8s.io/api does not know. Metadata and Spec are nil when the pod
// has none (or null): a patch cannot add a member to an object that is not there,
// so it creates them first (the API server sends pods with both, but a patch must
// apply to whatever it was made for).
type podArrays struct {
	Metadata *struct{}      `json:"metadata"`
	Spec     *podSpecArrays `json:"spec"`
}

type podSpecArrays struct {
	InitContainers []json.RawMessage `json:"initContainers"`
	Containers     []json.RawMessage `json:"containers"`
	Volumes        []json.RawMessage `json:"volumes"`
}

// patch renders the sidecar for pod (decoded from raw) and returns the JSON patch
// that injects it, or a nil patch and the reason it is not injected.
func (i *Injector) patch(pod *corev1.Pod, raw []byte) ([]byte, string, error) {
	s, err := render(i.template, TemplateData{Values: i.values, Pod: pod})
	if err != nil {
		return nil, resultError, err
	}
	status := s.status(i.version)
	for _, name := range slices.Concat(status.InitContainers, status.Containers) {
		if hasContainer(pod, name) {
			return nil, resultAlreadyInjected, nil
		}
	}
	for _, name := range status.Volumes {
		if slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name }) {
			return nil, resultError, fmt.Errorf("the pod has a volume named %s, which the sidecar adds", name)
		}
	}
	var current podArrays
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &current); err != nil {
		return nil, resultError, fmt.Errorf("decoding the pod: %w", err)
	}
	var ops []patchOp
	if current.Metadata == nil {
		ops = append(ops, patchOp{"add", "/metadata", map[string]any{}})
	}
	if current.Spec == nil {
		ops = append(ops, patchOp{"add", "/spec", map[string]any{}})
		current.Spec = &podSpecArrays{}
	}
	// Injected init containers go first: capture must be in place before the
	// application's init containers run, and these have the mesh then.
	if len(s.InitContainers) > 0 {
		ops = append(ops, patchOp{"add", "/spec/initContainers", slices.Concat(rawItems(s.InitContainers), current.Spec.InitContainers)})
	}
	// Containers go last, so that the application stays the pod's first container,
	// the one kubectl logs and exec default to.
	if len(s.Containers) > 0 {
		ops = append(ops, patchOp{"add", "/spec/containers", slices.Concat(current.Spec.Containers, rawItems(s.Containers))})
	}
	if len(s.Volumes) > 0 {
		ops = append(ops, patchOp{"add", "/spec/volumes", slices.Concat(current.Spec.Volumes, rawItems(s.Volumes))})
	}

	marker, err := json.Marshal(status)
	if err != nil {
		return nil, resultError, err
	}
	annotations := maps.Clone(s.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[StatusAnnotation] = string(marker)
	if pod.Annotations == nil {
		ops = append(ops, patchOp{"add", "/metadata/annotations", annotations})
	} else {
		for _, k := range slices.Sorted(maps.Keys(annotations)) {
			ops = append(ops, patchOp{"add", "/metadata/annotations/" + escapePointer(k), annotations[k]})
		}
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, resultError, err
	}
	return patch, resultInjected, nil
}

// rawItems encodes the items of a rendered array one by one, to be joined with the
// pod's raw items. The items are plain API structs: encoding cannot fail.
func rawItems[T any](items []T) []json.RawMessage {
	out := make([]json.RawMessage, len(items))
	for i, item := range items {
		out[i], _ = json.Marshal(item)
	}
	return out
}

// escapePointer escapes a key for a JSON pointer (RFC 6901): annotation names hold
// "/" (and might hold "~").
var escapePointer = strings.NewReplacer("~", "~0", "/", "~1").Replace

// status lists what s injects.
func (s *sidecar) status(version string) InjectionStatus {
	st := InjectionStatus{Version: version, InitContainers: []string{}, Containers: []string{}, Volumes: []string{}}
	for _, c := range s.InitContainers {
		st.InitContainers = append(st.InitContainers, c.Name)
	}
	for _, c := range s.Containers {
		st.Containers = append(st.Containers, c.Name)
	}
	for _, v := range s.Volumes {
		st.Volumes = append(st.Volumes, v.Name)
	}
	return st
}
