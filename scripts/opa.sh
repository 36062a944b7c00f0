#!/usr/bin/env bash
# Installs the opa CLI (for `opa test policies/`) from the Go module proxy into the
# gitignored .cache/bin, unless the pinned version is already there. Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."

version=v1.22.3 # pinned; the Go engine is to use the same OPA release
bin="$PWD/.cache/bin/opa"
if [[ -x "$bin" ]] && "$bin" version 2>/dev/null | grep -qx "Version: ${version#v}"; then
  echo "$bin"
  exit 0
fi
echo "building opa $version into .cache/bin (about 2 minutes, once)" >&2
mkdir -p .cache/bin
tmp=$(mktemp -d)
(cd "$tmp" && GOBIN="$(dirname "$bin")" go install "github.com/open-policy-agent/opa@$version")
rm -rf "$tmp"
echo "$bin"
