#!/usr/bin/env bash
# Regenerates the Go code of the project's .proto files. Needs protoc (Debian
# package protobuf-compiler); the Go plugins are built into .cache/bin at pinned
# versions. The generated files are committed: building and testing never run this.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }
export GOBIN="$PWD/.cache/bin"
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
export PATH="$GOBIN:$PATH"

protoc --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  identity/identitypb/ca.proto
protoc --go_out=. --go_opt=paths=source_relative \
  mesh/config/policypb/regopolicy.proto
