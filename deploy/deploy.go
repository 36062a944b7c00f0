// Package deploy holds what installs Palisade on Kubernetes: the CRDs of the kinds it
// reads (generated from their API types into crds/, and a copy of the Gateway API's)
// and Render, which writes the manifests of the whole installation.
package deploy

import "embed"

//go:generate go run ./internal/gencrds -out crds

// crdFiles are the CRDs of Palisade's kinds (crds/*.yaml) and of the Gateway API
// (crds/gateway-api/*.yaml).
//
//go:embed crds/*.yaml crds/gateway-api/*.yaml
var crdFiles embed.FS
