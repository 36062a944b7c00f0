package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/palisade-mesh/palisade/identity/wellknown"
	"github.com/palisade-mesh/palisade/xds"
)

func runBootstrap(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bootstrap", "bootstrap [flags]",
		"Writes a bootstrap that points a proxy at palisaded: --kind grpc writes the JSON a\nproxyless gRPC app reads from GRPC_XDS_BOOTSTRAP; --kind envoy writes an Envoy\nsidecar's bootstrap YAML.\n\nFor mutual TLS, a gRPC app needs --cert-dir (where palisade-agent writes its\ncertificates); Envoy gets them from the agent's SDS socket (--sds-socket).", stderr)
	kind := fs.String("kind", "grpc", "grpc (proxyless gRPC, JSON) or envoy (Envoy sidecar, YAML)")
	o := xds.BootstrapOptions{}
	fs.StringVar(&o.XDSAddress, "xds-address", "127.0.0.1:15010", "palisaded's xDS address")
	fs.StringVar(&o.Namespace, "namespace", "default", "the workload's namespace")
	fs.StringVar(&o.ServiceAccount, "service-account", "", "the workload's service account")
	fs.StringVar(&o.NodeID, "node-id", "", "node ID (default: Istio's form, sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local)")
	labels := fs.String("labels", "", "workload labels, k=v[,k=v...]")
	ips := fs.String("instance-ips", "", "the workload's IP addresses, comma separated")
	name := fs.String("name", "", "workload name used in the default node ID (default: the host name)")
	adminPort := fs.Uint("admin-port", 15000, "envoy: admin port on 127.0.0.1")
	delta := fs.Bool("delta", false, "envoy: use delta xDS")
	fs.StringVar(&o.SDSSocket, "sds-socket", wellknown.Socket, "envoy: the agent's Unix socket serving SDS (the sds-grpc cluster)")
	fs.StringVar(&o.CertDir, "cert-dir", "", "grpc: directory of the certificate files palisade-agent writes ("+wellknown.CertChainFile+", "+wellknown.KeyFile+", "+wellknown.RootCertFile+");\nadds the certificate provider \"default\" that mutual TLS needs (without it, the app rejects\nconfiguration asking for mutual TLS)")
	fs.DurationVar(&o.CertRefresh, "cert-refresh", xds.DefaultCertRefresh, "grpc: how often the app rereads the files in --cert-dir")
	out := fs.String("o", "-", "output file, - for standard output")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	var err error
	if o.Labels, err = parseLabels(*labels); err != nil {
		return err
	}
	if *ips != "" {
		o.InstanceIPs = strings.Split(*ips, ",")
	}
	if o.NodeID == "" {
		o.NodeID = defaultNodeID(*name, o)
	}
	var data []byte
	switch *kind {
	case "grpc":
		if o.CertDir != "" {
			if o.CertDir, err = filepath.Abs(o.CertDir); err != nil {
				return err
			}
		}
		data, err = xds.GRPCBootstrap(o)
	case "envoy":
		if *adminPort == 0 || *adminPort > 65535 {
			return fmt.Errorf("%w: --admin-port %d is out of range", errUsage, *adminPort)
		}
		data, err = xds.EnvoyBootstrapYAML(o, uint32(*adminPort), *delta)
	default:
		return fmt.Errorf("%w: --kind %q: use grpc or envoy", errUsage, *kind)
	}
	if err != nil {
		return err
	}
	if *out == "-" {
		_, err = stdout.Write(append(data, '\n'))
		return err
	}
	return os.WriteFile(*out, append(data, '\n'), 0o644)
}

func parseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: --labels: %q is not k=v", errUsage, kv)
		}
		out[k] = v
	}
	return out, nil
}

func defaultNodeID(name string, o xds.BootstrapOptions) string {
	if name == "" {
		name, _ = os.Hostname()
	}
	ip := "127.0.0.1"
	if len(o.InstanceIPs) > 0 {
		ip = o.InstanceIPs[0]
	}
	return xds.SidecarNodeID(ip, name, o.Namespace)
}
