#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Node.js packages for the
# grpc-js-xds end-to-end tests, the opa CLI) into gitignored folders, then runs lint,
# the Rego policy tests, and every Go test, with the race detector, including the
# end-to-end suites under test/. The Kubernetes suites run against a real
# kube-apiserver and etcd, built once from the Go module proxy by scripts/kube.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/lint.sh
./scripts/system-deps.sh
./test/node/install.sh

# The Rego policies: formatted, strictly checked, and their tests pass.
opa=$(./scripts/opa.sh)
"$opa" fmt --fail --list policies/
"$opa" check --strict policies/
"$opa" test policies/
KUBEBUILDER_ASSETS=$(./scripts/kube.sh)
export KUBEBUILDER_ASSETS
go test -race -timeout 20m "$@" ./...
