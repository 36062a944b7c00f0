// Command gencrds writes Palisade's CustomResourceDefinitions into a folder: one file
// per kind it reads, generated from the kind's spec message by package crdgen, and a
// copy of the Gateway API standard-channel CRDs of the module version go.mod requires.
// Run it with `go generate ./deploy`.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/gateway-api/pkg/consts"
	"sigs.k8s.io/yaml"

	"github.com/palisade-mesh/palisade/deploy/crdgen"
	"github.com/palisade-mesh/palisade/mesh/config"
	"github.com/palisade-mesh/palisade/mesh/config/policypb"
)

// GatewayAPIDir is the folder, under the output folder, of the Gateway API CRDs.
const GatewayAPIDir = "gateway-api"

const gatewayAPIModule = "sigs.k8s.io/gateway-api"

var (
	networkingVersions = []string{"v1", "v1beta1", "v1alpha3"}
	securityVersions   = []string{"v1", "v1beta1"}
	istioNetworking    = []string{"istio-io", "networking-istio-io"}
	istioSecurity      = []string{"istio-io", "security-istio-io"}
)

// resources are the kinds Palisade reads (package mesh/config), with the names and
// categories Istio's own CRDs give them, so kubectl works as with Istio.
var resources = []crdgen.Resource{
	{
		Group: config.NetworkingGroup, Kind: string(config.KindServiceEntry), Plural: "serviceentries",
		Versions: networkingVersions, StorageVersion: "v1", ShortNames: []string{"se"}, Categories: istioNetworking,
		Description: "ServiceEntry adds services to the mesh's registry: services outside the mesh, or inside it but unknown to Kubernetes, with their hosts, ports and endpoints.",
		Spec:        (&networking.ServiceEntry{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.NetworkingGroup, Kind: string(config.KindWorkloadEntry), Plural: "workloadentries",
		Versions: networkingVersions, StorageVersion: "v1", ShortNames: []string{"we"}, Categories: istioNetworking,
		Description: "WorkloadEntry describes one workload outside Kubernetes (a VM or bare-metal host) by its address and labels, so that ServiceEntries can select it.",
		Spec:        (&networking.WorkloadEntry{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.NetworkingGroup, Kind: string(config.KindVirtualService), Plural: "virtualservices",
		Versions: networkingVersions, StorageVersion: "v1", ShortNames: []string{"vs"}, Categories: istioNetworking,
		Description: "VirtualService routes the requests sent to a set of hosts: it matches HTTP, TLS or TCP traffic and sends it to destinations, splitting, rewriting, retrying or injecting faults on the way.",
		Spec:        (&networking.VirtualService{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.NetworkingGroup, Kind: string(config.KindDestinationRule), Plural: "destinationrules",
		Versions: networkingVersions, StorageVersion: "v1", ShortNames: []string{"dr"}, Categories: istioNetworking,
		Description: "DestinationRule sets the policies of traffic to a service once routed: load balancing, connection pools, outlier detection, TLS, and named subsets of its endpoints.",
		Spec:        (&networking.DestinationRule{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.SecurityGroup, Kind: string(config.KindPeerAuthentication), Plural: "peerauthentications",
		Versions: securityVersions, StorageVersion: "v1", ShortNames: []string{"pa"}, Categories: istioSecurity,
		Description: "PeerAuthentication sets the mutual TLS mode in which the selected workloads accept traffic, for the whole workload or per port.",
		Spec:        (&security.PeerAuthentication{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.SecurityGroup, Kind: string(config.KindAuthorizationPolicy), Plural: "authorizationpolicies",
		Versions: securityVersions, StorageVersion: "v1", ShortNames: []string{"ap"}, Categories: istioSecurity,
		Description: "AuthorizationPolicy allows, denies or audits the requests to the selected workloads that its rules match, or delegates them to a CUSTOM provider.",
		Spec:        (&security.AuthorizationPolicy{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.SecurityGroup, Kind: string(config.KindRequestAuthentication), Plural: "requestauthentications",
		Versions: securityVersions, StorageVersion: "v1", ShortNames: []string{"ra"}, Categories: istioSecurity,
		Description: "RequestAuthentication declares the JSON Web Tokens the selected workloads accept: their issuers, keys, audiences and where requests carry them.",
		Spec:        (&security.RequestAuthentication{}).ProtoReflect().Descriptor(),
	},
	{
		Group: config.PolicyGroup, Kind: string(config.KindRegoPolicy), Plural: "regopolicies",
		Versions: []string{"v1alpha1"}, StorageVersion: "v1alpha1", ShortNames: []string{"rp"}, Categories: []string{"palisade", "policy-palisade-dev"},
		Description: "RegoPolicy is a Rego module that decides the requests to the workloads it selects, or that AuthorizationPolicies delegate to it as a CUSTOM provider.",
		Spec:        (&policypb.RegoPolicy{}).ProtoReflect().Descriptor(),
	},
}

func main() {
	out := flag.String("out", "crds", "folder to write the CRDs into")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gencrds:", err)
		os.Exit(1)
	}
}

// run replaces the YAML files of the folder with the generated ones.
func run(dir string) error {
	files, err := generate()
	if err != nil {
		return err
	}
	for _, sub := range []string{dir, filepath.Join(dir, GatewayAPIDir)} {
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		stale, err := filepath.Glob(filepath.Join(sub, "*.yaml"))
		if err != nil {
			return err
		}
		for _, f := range stale {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// generate returns the content of every file, by slash-separated path relative to
// the output folder.
func generate() (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, r := range resources {
		data, err := crdYAML(r)
		if err != nil {
			return nil, err
		}
		files[r.Group+"_"+r.Plural+".yaml"] = data
	}
	if err := addGatewayAPI(files); err != nil {
		return nil, err
	}
	return files, nil
}

func crdYAML(r crdgen.Resource) ([]byte, error) {
	crd, err := crdgen.CRD(r)
	if err != nil {
		return nil, err
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(crd)
	if err != nil {
		return nil, err
	}
	// Fields the API server owns: an empty status and a null creation time.
	delete(obj, "status")
	delete(obj["metadata"].(map[string]any), "creationTimestamp")
	data, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	header := fmt.Sprintf("# Code generated by deploy/internal/gencrds from %s; DO NOT EDIT.\n", r.Spec.FullName())
	return append([]byte(header), data...), nil
}

// addGatewayAPI adds the Gateway API standard-channel CRDs, copied unchanged from the
// module, and a note of their version.
func addGatewayAPI(files map[string][]byte) error {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}\n{{.Version}}", gatewayAPIModule)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("locating %s: %w: %s", gatewayAPIModule, err, stderr.String())
	}
	dir, version, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	// The module's own record of the bundle its CRDs are annotated with; importing it
	// also keeps the module, which no other Go code imports, in go.mod.
	if version != consts.BundleVersion {
		return fmt.Errorf("%s: go list says %s, its consts.BundleVersion %s", gatewayAPIModule, version, consts.BundleVersion)
	}
	src := filepath.Join(dir, "config", "crd", "standard")
	names, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("no CRDs in %s", src)
	}
	slices.Sort(names)
	var list strings.Builder
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		files[GatewayAPIDir+"/"+filepath.Base(name)] = data
		fmt.Fprintf(&list, "- %s\n", filepath.Base(name))
	}
	files[GatewayAPIDir+"/README.md"] = fmt.Appendf(nil, `# Gateway API CRDs

The standard channel of the Kubernetes Gateway API, %[1]s %[2]s (the
version go.mod requires), copied unchanged from the module's config/crd/standard
folder by `+"`go generate ./deploy`"+`. Besides the CRDs it holds the Gateway API's
ValidatingAdmissionPolicy against installing an older channel over a newer one
(`+"`*_vap_safeupgrades.yaml`"+`). `+"`palisadectl install --gateway-api`"+` installs them all.

%[3]s`, gatewayAPIModule, version, list.String())
	return nil
}
