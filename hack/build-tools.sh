#!/usr/bin/env bash
# Builds the Go test-bed components that ship no other way, pinned, from the Go module proxy, and caches each
# under ~/.cache/tollway/bin/<name>-<version>/. A second run with the binary present does nothing.
#
#   hack/build-tools.sh ratelimit            # envoyproxy/ratelimit (no releases since v1.4.0: a pinned commit)
#   hack/build-tools.sh prometheus-adapter   # sigs.k8s.io/prometheus-adapter
#   hack/build-tools.sh helm                 # helm.sh/helm/v3, for the chart's tests
#   hack/build-tools.sh vegeta               # a constant-rate load generator, for bench/gateway_cost.py
#   hack/build-tools.sh otelcol              # an OpenTelemetry Collector of hack/otelcol/main.go's components
#   hack/build-tools.sh kwok                 # sigs.k8s.io/kwok: simulated nodes and kubelets for the control plane
#
# Prints the directory that holds the binary. Each is built inside a throw-away module (`go get` then
# `go build`), because the proxy refuses to list some of these modules' versions, which `go install` needs.
set -euo pipefail

cache=${TOLLWAY_CACHE:-$HOME/.cache/tollway}
case "${1:?usage: build-tools.sh ratelimit|prometheus-adapter|helm|vegeta|otelcol|kwok}" in
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
  otelcol)
    # No released distribution is a Go package to build, so hack/otelcol/main.go is the main package and
    # the component modules are pinned here, core and contrib at one release: v0.161.0, the newest at which
    # contrib's fileexporter resolves with Go 1.26 (newer ones failed); it builds with this machine's Go, so
    # no GOTOOLCHAIN. The core's stable v1.x modules (the confmap providers main.go names) are taken at the
    # version otelcol itself requires (v1.67.0 for v0.161.0), never at their newest.
    # The cache is keyed by the version and main.go's hash: a changed main.go builds anew.
    package=.
    version=${OTELCOL_VERSION:-v0.161.0}
    binary=otelcol ;;
  kwok)
    package=sigs.k8s.io/kwok/cmd/kwok
    version=${KWOK_VERSION:-v0.8.0}
    binary=kwok ;;
  *) echo "unknown tool: $1" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
out="$cache/bin/$binary-$version"
if [ "$binary" = otelcol ]; then
  out="$out-$(sha256sum "$root/hack/otelcol/main.go" | cut -c1-12)"
fi
if [ ! -x "$out/$binary" ]; then
  echo ">> building $binary $version from the Go module proxy (first time only, a minute or two)" >&2
  mkdir -p "$out"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  printf 'module tollway.local/%s-build\n\ngo 1.22\n' "$binary" > go.mod
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  ldflags="-s -w"
  if [ "$binary" = otelcol ]; then
    cp "$root/hack/otelcol/main.go" .
    core=go.opentelemetry.io/collector
    go get "$core/otelcol@$version" "$core/receiver/otlpreceiver@$version" \
      "$core/processor/batchprocessor@$version" "$core/exporter/debugexporter@$version" \
      "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$version" >&2
    stable=$(go list -m -f '{{.Version}}' "$core/confmap")
    go get "$core/confmap/provider/fileprovider@$stable" "$core/confmap/provider/envprovider@$stable" \
      "$core/confmap/provider/yamlprovider@$stable" >&2
    go mod tidy >&2
    ldflags="$ldflags -X main.version=$version"
  else
    go get "$package@$version" >&2
  fi
  go build -trimpath -ldflags "$ldflags" -o "$out/$binary.tmp" "$package" >&2
  mv "$out/$binary.tmp" "$out/$binary"
fi
echo "$out"
