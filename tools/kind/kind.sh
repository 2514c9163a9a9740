#!/usr/bin/env bash
# kind, built from the Go module proxy (sigs.k8s.io/kind@$KIND_VERSION) into the cache.
#
#   tools/kind/kind.sh            build unless present; print the binary's path
#   tools/kind/kind.sh --source   print the module's source directory (kind's node base files
#                                 are in images/base/files there)
set -euo pipefail
LOG_TAG=kind
. "$(dirname "$0")/lib.sh"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

command -v go >/dev/null || die "the go command is required to build kind"

source_dir() {
    local dir
    dir=$(cd "$KIND_CACHE" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [ -d "$dir" ] || die "go mod download sigs.k8s.io/kind@$KIND_VERSION gave no source directory"
    echo "$dir"
}

if [ "${1:-}" = "--source" ]; then source_dir; exit 0; fi
if [ ! -x "$KIND_BIN" ]; then
    mkdir -p "$(dirname "$KIND_BIN")"
    log "building kind $KIND_VERSION (go install, log: $KIND_BIN.log)"
    t=$(date +%s)
    if ! (cd "$KIND_CACHE" && GOBIN=$(dirname "$KIND_BIN") with_heartbeat nice go install -trimpath \
            -ldflags=-s\ -w "sigs.k8s.io/kind@$KIND_VERSION" >"$KIND_BIN.log" 2>&1); then
        tail -n 20 "$KIND_BIN.log" >&2
        die "building kind failed"
    fi
    log "kind $KIND_VERSION built in $(($(date +%s) - t))s"
fi
echo "$KIND_BIN"
