#!/usr/bin/env bash
# Builds kube-apiserver and etcd, for the tests that run against a real Kubernetes API
# server, from the Go module proxy into the gitignored .cache/kube/VERSIONS, unless they
# are already there. Prints that folder (what envtest's KUBEBUILDER_ASSETS names).
#
# Neither module can be `go install`ed (their go.mod files carry replace directives), so
# each is built in a throwaway wrapper module that repeats those replaces. A cold build
# takes 6-20 minutes on two cores (17 on a loaded one) and downloads ~120 MB; its Go build cache is kept
# apart, in .cache/kube/gocache, so that it does not crowd the main one.
set -euo pipefail
cd "$(dirname "$0")/.."

kube_version=v1.37.2 # kube-apiserver; its staging modules are v0.37.2
etcd_version=v3.7.3
out="$PWD/.cache/kube/kube-apiserver-$kube_version-etcd-$etcd_version"
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi
echo "building kube-apiserver $kube_version and etcd $etcd_version into $out (6-15 minutes, once)" >&2
export GOCACHE="$PWD/.cache/kube/gocache" GOFLAGS=-mod=mod GOTOOLCHAIN=local
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out.tmp"

# kube-apiserver: require k8s.io/kubernetes and point every staging module it replaces
# with a local path at the same release on the proxy (v1.X.Y → v0.X.Y).
staging_version="v0.${kube_version#v1.}"
mkdir "$work/kube"
modfile=$(cd "$work/kube" && printf 'module wrapper\n\ngo 1.26\n' >go.mod && go mod download -json "k8s.io/kubernetes@$kube_version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
{
  printf 'module wrapper\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$kube_version"
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile" | grep -v '^k8s.io/sample-' |
    while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
  printf ')\n'
} >"$work/kube/go.mod"
cat >"$work/kube/tools.go" <<'GO'
//go:build tools

package wrapper

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$kube_version") -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$work/kube" && go mod tidy -e >/dev/null 2>&1 || true; go get "k8s.io/kubernetes/cmd/kube-apiserver@$kube_version" >&2 &&
  go build -trimpath -ldflags "$ldflags" -o "$out.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)

# etcd: the server module with its sibling modules at the same release.
mkdir "$work/etcd"
{
  printf 'module wrapper\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n\nreplace (\n' "$etcd_version"
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do printf '\tgo.etcd.io/etcd/%s => go.etcd.io/etcd/%s %s\n' "$m" "$m" "$etcd_version"; done
  printf ')\n'
} >"$work/etcd/go.mod"
(cd "$work/etcd" && go get "go.etcd.io/etcd/server/v3@$etcd_version" >&2 &&
  go build -trimpath -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3)

rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
