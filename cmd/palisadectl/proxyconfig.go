package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	xdsserver "github.com/palisade-mesh/palisade/xds/server"
)

func runProxyConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("proxy-config", "proxy-config [flags] NODE_ID",
		"Prints the listeners, routes, clusters and endpoints palisaded generates for a\nconnected proxy (or, with --namespace, for any proxy of that namespace).", stderr)
	addr := fs.String("monitoring-address", "127.0.0.1:15014", "palisaded's monitoring address")
	namespace := fs.String("namespace", "", "show the config of a proxy in this namespace instead of a connected node")
	kind := fs.String("kind", "", "with --namespace: sidecar or proxyless")
	only := fs.String("type", "all", "resource type: listeners, routes, clusters, endpoints or all")
	output := fs.String("o", "yaml", "output format: yaml or json")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	q := url.Values{}
	switch {
	case len(pos) == 1:
		q.Set("node", pos[0])
	case len(pos) == 0 && *namespace != "":
		q.Set("namespace", *namespace)
		q.Set("kind", *kind)
	default:
		return fmt.Errorf("%w: expected a node ID (or --namespace)", errUsage)
	}
	if *output != "yaml" && *output != "json" {
		return fmt.Errorf("%w: -o %q: use yaml or json", errUsage, *output)
	}
	wantType, err := typeFilter(*only)
	if err != nil {
		return err
	}

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + *addr + "/debug/config_dump?" + q.Encode())
	if err != nil {
		return fmt.Errorf("reaching palisaded at %s: %w", *addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("palisaded: %s", strings.TrimSpace(string(body)))
	}
	var dump xdsserver.ConfigDump
	if err := json.Unmarshal(body, &dump); err != nil {
		return fmt.Errorf("decoding palisaded's answer: %w", err)
	}
	for typeURL := range dump.Resources {
		if wantType != "" && !strings.HasSuffix(typeURL, wantType) {
			delete(dump.Resources, typeURL)
		}
	}
	out, err := json.MarshalIndent(dump, "", "  ")
	if err != nil {
		return err
	}
	if *output == "yaml" {
		if out, err = yaml.JSONToYAML(out); err != nil {
			return err
		}
	}
	_, err = stdout.Write(append(out, '\n'))
	return err
}

// typeFilter maps a --type value to the suffix of its type URL ("" for all).
func typeFilter(t string) (string, error) {
	switch t {
	case "all":
		return "", nil
	case "listeners":
		return ".Listener", nil
	case "routes":
		return ".RouteConfiguration", nil
	case "clusters":
		return ".Cluster", nil
	case "endpoints":
		return ".ClusterLoadAssignment", nil
	}
	return "", fmt.Errorf("%w: --type %q: use listeners, routes, clusters, endpoints or all", errUsage, t)
}
