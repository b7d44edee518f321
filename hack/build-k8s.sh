#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from the Go module proxy, pinned to one
# release, and caches them under ~/.cache/tollway/bin/k8s-<version>/. A second run with the binaries present does
# nothing; a cache from before a binary was added to `commands` builds only that one.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io staging module with a local
# path. So we build inside a throw-away module that requires k8s.io/kubernetes and points each of those
# staging modules at its published v0.<minor>.<patch> tag instead.
set -euo pipefail

version=${K8S_VERSION:-1.37.2}
staging_version="v0.${version#*.}"
cache=${TOLLWAY_CACHE:-$HOME/.cache/tollway}
out="$cache/bin/k8s-v$version"
commands=(kube-apiserver kube-controller-manager kube-scheduler)

missing=()
for cmd in "${commands[@]}"; do [ -x "$out/$cmd" ] || missing+=("$cmd"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod CGO_ENABLED=0
gomod=$(go mod download -json "k8s.io/kubernetes@v$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')

{
  echo "module tollway.local/k8s-build"
  echo
  grep -E '^go ' "$gomod"
  echo
  echo "require k8s.io/kubernetes v$version"
  echo
  echo "replace ("
  sed -nE "s#^[[:space:]]*(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+\$#\t\1 => \1 $staging_version#p" "$gomod"
  echo ")"
} > go.mod

minor=${version#*.}; minor=${minor%%.*}
stamp="-X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitMajor=1"
stamp+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
stamp+=" -X k8s.io/client-go/pkg/version.gitVersion=v$version -X k8s.io/client-go/pkg/version.gitMajor=1"
stamp+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"

mkdir -p "$out"
for cmd in "${missing[@]}"; do
  echo ">> building $cmd v$version (first time only; several minutes on 2 cores)" >&2
  go get "k8s.io/kubernetes/cmd/$cmd@v$version" >&2
  go build -trimpath -ldflags "-s -w $stamp" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
  mv "$out/$cmd.tmp" "$out/$cmd"
done
echo "$out"
