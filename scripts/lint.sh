#!/usr/bin/env bash
# gofmt, go vet and staticcheck over the whole module; fails listing what needs work.
set -euo pipefail
cd "$(dirname "$0")/.."
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*'))
if [[ -n "$unformatted" ]]; then
  echo "gofmt needed on:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
# staticcheck, pinned, built from the Go module proxy into the Go build cache.
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
