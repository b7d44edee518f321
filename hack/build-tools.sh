#!/usr/bin/env bash
# Builds the Go test-bed components that ship no other way, pinned, from the Go module proxy, and caches each
# under ~/.cache/tollway/bin/<name>-<version>/. A second run with the binary present does nothing.
#
#   hack/build-tools.sh ratelimit     # envoyproxy/ratelimit (no tagged releases since v1.4.0: a pinned commit)
#
# Prints the directory that holds the binary.
set -euo pipefail

cache=${TOLLWAY_CACHE:-$HOME/.cache/tollway}
case "${1:?usage: build-tools.sh ratelimit}" in
  ratelimit)
    module=github.com/envoyproxy/ratelimit/src/service_cmd
    version=${RATELIMIT_VERSION:-v1.4.1-0.20260122083618-3fb702589d36}
    binary=ratelimit ;;
  *) echo "unknown tool: $1" >&2; exit 2 ;;
esac

out="$cache/bin/$binary-$version"
if [ ! -x "$out/$binary" ]; then
  echo ">> building $binary $version from the Go module proxy (first time only, about a minute)" >&2
  mkdir -p "$out"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  CGO_ENABLED=0 GOBIN="$work" go install -trimpath -ldflags "-s -w" "$module@$version" >&2
  mv "$work/$(basename "$module")" "$out/$binary"
fi
echo "$out"
