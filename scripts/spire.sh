#!/usr/bin/env bash
# Builds SPIRE's server and agent (the baseline that bench/identity --spire
# measures) from the Go module proxy into the gitignored .cache/spire/bin/.
# The proxy serves SPIRE only as a tool of a module, so a throwaway module under
# .cache/spire/mod requires it; none of SPIRE's code is committed. Skips the build
# when both binaries are there and report the wanted version.
set -euo pipefail
cd "$(dirname "$0")/.."

version=v1.13.3
root=$PWD/.cache/spire
bin=$root/bin
cmds=(spire-server spire-agent)

have() {
	for c in "${cmds[@]}"; do
		[[ -x $bin/$c ]] || return 1
		# spire-server and spire-agent print their version (without the v) on stderr.
		[[ $("$bin/$c" --version 2>&1) == "${version#v}"* ]] || return 1
	done
}

if have; then
	for c in "${cmds[@]}"; do echo "$c $("$bin/$c" --version 2>&1) (cached in $bin)"; done
	exit 0
fi

mkdir -p "$root/mod" "$bin"
cd "$root/mod"
[[ -f go.mod ]] || go mod init spire-tools >/dev/null 2>&1
for c in "${cmds[@]}"; do
	go get -tool "github.com/spiffe/spire/cmd/$c@$version"
done
for c in "${cmds[@]}"; do
	GOBIN=$bin go install "github.com/spiffe/spire/cmd/$c"
done
have || { echo "spire.sh: built binaries do not report $version" >&2; exit 1; }
for c in "${cmds[@]}"; do echo "$c $("$bin/$c" --version 2>&1) (built into $bin)"; done
