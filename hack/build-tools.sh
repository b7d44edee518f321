#!/usr/bin/env bash
# Builds the Go test-bed components that ship no other way, pinned, from the Go module proxy, and caches each
# under ~/.cache/tollway/bin/<name>-<version>/. A second run with the binary present does nothing.
#
#   hack/build-tools.sh ratelimit            # envoyproxy/ratelimit (no releases since v1.4.0: a pinned commit)
#   hack/build-tools.sh prometheus-adapter   # sigs.k8s.io/prometheus-adapter
#   hack/build-tools.sh helm                 # helm.sh/helm/v3, for the chart's tests
#   hack/build-tools.sh vegeta               # a constant-rate load generator, for bench/gateway_cost.py
#
# Prints the directory that holds the binary. Each is built inside a throw-away module (`go get` then
# `go build`), because the proxy refuses to list some of these modules' versions, which `go install` needs.
set -euo pipefail

cache=${TOLLWAY_CACHE:-$HOME/.cache/tollway}
case "${1:?usage: build-tools.sh ratelimit|prometheus-adapter|helm|vegeta}" in
  ratelimit)
    package=github.com/envoyproxy/ratelimit/src/service_cmd
    version=${RATELIMIT_VERSION:-v1.4.1-0.20260122083618-3fb702589d36}
    binary=ratelimit ;;
  prometheus-adapter)
    package=sigs.k8s.io/prometheus-adapter/cmd/adapter
    version=${PROMETHEUS_ADAPTER_VERSION:-v0.12.0}
    binary=prometheus-adapter ;;
  helm)
    package=helm.sh/helm/v3/cmd/helm
    version=${HELM_VERSION:-v3.22.0}
    binary=helm ;;
  vegeta)
    package=github.com/tsenart/vegeta/v12
    version=${VEGETA_VERSION:-v12.13.0}
    binary=vegeta ;;
  *) echo "unknown tool: $1" >&2; exit 2 ;;
esac

out="$cache/bin/$binary-$version"
if [ ! -x "$out/$binary" ]; then
  echo ">> building $binary $version from the Go module proxy (first time only, a minute or two)" >&2
  mkdir -p "$out"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  printf 'module tollway.local/%s-build\n\ngo 1.22\n' "$binary" > go.mod
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  go get "$package@$version" >&2
  go build -trimpath -ldflags "-s -w" -o "$out/$binary.tmp" "$package" >&2
  mv "$out/$binary.tmp" "$out/$binary"
fi
echo "$out"
