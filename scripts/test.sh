#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Node.js packages for the
# grpc-js-xds end-to-end tests) into gitignored folders, then runs lint and every
# Go test, with the race detector, including the end-to-end suites under test/.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/lint.sh
./test/node/install.sh
go test -race -timeout 20m "$@" ./...
