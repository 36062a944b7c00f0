package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-mesh/palisade/mesh"
	"github.com/palisade-mesh/palisade/xds"
)

// ConfigDump is what /debug/config_dump returns for a proxy.
type ConfigDump struct {
	Node            string                       `json:"node"`
	Namespace       string                       `json:"namespace"`
	Kind            mesh.ProxyKind               `json:"kind"`
	SnapshotVersion uint64                       `json:"snapshot_version"`
	Resources       map[string][]json.RawMessage `json:"resources"`
}

// DebugHandler serves /debug/syncz and /debug/config_dump.
//
// config_dump takes ?node=ID for a connected proxy, or
// ?namespace=NS&kind=sidecar|proxyless[&labels=k=v,k=v] to see what a proxy there
// (of a workload with those labels) would get.
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/syncz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.tracker.Status())
	})
	mux.HandleFunc("GET /debug/config_dump", s.configDump)
	return mux
}

func (s *Server) configDump(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := &mesh.Proxy{ID: q.Get("node"), Namespace: q.Get("namespace"), Kind: mesh.ProxyKind(q.Get("kind"))}
	if labels := q.Get("labels"); labels != "" {
		p.Labels = map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				http.Error(w, fmt.Sprintf("labels: %q is not k=v", kv), http.StatusBadRequest)
				return
			}
			p.Labels[k] = v
		}
	}
	if p.Namespace == "" {
		ps, ok := s.tracker.proxy(p.ID)
		if !ok {
			http.Error(w, fmt.Sprintf("no connected proxy has node ID %q; pass ?node=ID of a connected proxy, or ?namespace=NS&kind=sidecar|proxyless[&labels=k=v,...]", p.ID), http.StatusNotFound)
			return
		}
		p.Namespace, p.Kind, p.Labels = ps.Namespace, mesh.ProxyKind(ps.Kind), ps.Labels
	}
	switch p.Kind {
	case "":
		p.Kind = mesh.KindSidecar
	case mesh.KindSidecar, mesh.KindProxyless:
	default:
		http.Error(w, fmt.Sprintf("kind %q is neither sidecar nor proxyless", p.Kind), http.StatusBadRequest)
		return
	}
	res, version, err := s.cache.Resources(p)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	dump := ConfigDump{Node: p.ID, Namespace: p.Namespace, Kind: p.Kind, SnapshotVersion: version, Resources: map[string][]json.RawMessage{}}
	for _, typeURL := range xds.TypeURLs {
		for _, m := range res.ByType(typeURL) {
			b, err := protojson.Marshal(proto.Message(m))
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			dump.Resources[typeURL] = append(dump.Resources[typeURL], b)
		}
	}
	writeJSON(w, dump)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// proxy returns the status of a connected proxy by node ID.
func (t *Tracker) proxy(node string) (ProxyStatus, bool) {
	for _, ps := range t.Status() {
		if ps.Node == node && node != "" {
			return ps, true
		}
	}
	return ProxyStatus{}, false
}
