package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/palisade-mesh/palisade/xds"
)

// envoyAdminPort is the sidecar's admin endpoint, on 127.0.0.1 (Istio's port).
const envoyAdminPort = 15000

// podEnv is where the agent learns about its pod: the environment (from the
// downward API: POD_NAME, INSTANCE_IP or POD_IP) and the network interfaces.
type podEnv struct {
	getenv         func(string) string
	hostname       func() (string, error)
	interfaceAddrs func() ([]net.Addr, error)
}

var systemPodEnv = podEnv{getenv: os.Getenv, hostname: os.Hostname, interfaceAddrs: net.InterfaceAddrs}

// writeEnvoyBootstrap writes the bootstrap of the Envoy sidecar of the workload id
// to o.envoyBootstrap, replacing the file atomically so that Envoy never reads a
// partial one: palisaded at o.xdsAddress, node identity and metadata in Istio's
// form (namespace and service account from id, the pod's labels from
// o.podLabelsFile, its IPs), and certificates from the agent's SDS socket.
func writeEnvoyBootstrap(o options, id spiffeid.ID, pod podEnv) error {
	bo, err := sidecarBootstrapOptions(o, id, pod)
	if err != nil {
		return fmt.Errorf("--envoy-bootstrap: %w", err)
	}
	data, err := xds.EnvoyBootstrapYAML(bo, envoyAdminPort, false)
	if err != nil {
		return fmt.Errorf("--envoy-bootstrap: %w", err)
	}
	if err := replaceFile(o.envoyBootstrap, data); err != nil {
		return fmt.Errorf("--envoy-bootstrap: %w", err)
	}
	return nil
}

func sidecarBootstrapOptions(o options, id spiffeid.ID, pod podEnv) (xds.BootstrapOptions, error) {
	// The agent has checked the form spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT.
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 {
		return xds.BootstrapOptions{}, fmt.Errorf("SPIFFE ID %s has no namespace and service account", id)
	}
	namespace, serviceAccount := parts[1], parts[3]
	sdsSocket, err := filepath.Abs(o.socket)
	if err != nil {
		return xds.BootstrapOptions{}, fmt.Errorf("--socket: %w", err)
	}
	ips, err := instanceIPs(pod)
	if err != nil {
		return xds.BootstrapOptions{}, err
	}
	var labels map[string]string
	if o.podLabelsFile != "" {
		if labels, err = readPodLabels(o.podLabelsFile); err != nil {
			return xds.BootstrapOptions{}, err
		}
	}
	name := pod.getenv("POD_NAME")
	if name == "" {
		if name, err = pod.hostname(); err != nil {
			return xds.BootstrapOptions{}, fmt.Errorf("the pod's name: set POD_NAME: %w", err)
		}
	}
	return xds.BootstrapOptions{
		NodeID:         xds.SidecarNodeID(ips[0], name, namespace),
		XDSAddress:     o.xdsAddress,
		Namespace:      namespace,
		ServiceAccount: serviceAccount,
		Labels:         labels,
		InstanceIPs:    ips,
		SDSSocket:      sdsSocket,
	}, nil
}

// instanceIPs are the pod's IP addresses: INSTANCE_IP or POD_IP (one address, or
// several comma separated as the downward API's status.podIPs gives them), else
// the addresses of its network interfaces other than loopback and link-local ones,
// IPv4 first.
func instanceIPs(pod podEnv) ([]string, error) {
	for _, name := range []string{"INSTANCE_IP", "POD_IP"} {
		v := pod.getenv(name)
		if v == "" {
			continue
		}
		var ips []string
		for _, s := range strings.Split(v, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("%s=%q: %w", name, v, err)
			}
			ips = append(ips, ip.String())
		}
		return ips, nil
	}
	addrs, err := pod.interfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("the pod's IP addresses: %w", err)
	}
	var found []netip.Addr
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if ip = ip.Unmap(); ok && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !slices.Contains(found, ip) {
			found = append(found, ip)
		}
	}
	if len(found) == 0 {
		return nil, errors.New("the pod has no IP address other than loopback and link-local ones: set INSTANCE_IP")
	}
	slices.SortStableFunc(found, func(a, b netip.Addr) int {
		switch {
		case a.Is4() == b.Is4():
			return 0
		case a.Is4():
			return -1
		default:
			return 1
		}
	})
	ips := make([]string, len(found))
	for i, ip := range found {
		ips[i] = ip.String()
	}
	return ips, nil
}

// readPodLabels reads the pod's labels from a file of the Kubernetes downward API
// (fieldRef metadata.labels): one key="value" a line, the value quoted as in Go.
func readPodLabels(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--pod-labels-file: %w", err)
	}
	labels := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		key, quoted, ok := strings.Cut(line, "=")
		value, err := strconv.Unquote(quoted)
		if !ok || key == "" || err != nil {
			return nil, fmt.Errorf("--pod-labels-file %s: line %d: %q is not key=\"value\"", path, i+1, line)
		}
		labels[key] = value
	}
	return labels, nil
}

// replaceFile replaces path with data by renaming a complete temporary file over
// it, so readers see the old file or the new one. It does not sync: the agent
// writes the file anew at every start.
func replaceFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
