#!/usr/bin/env bash
# Build the Gateway API mesh conformance tooling from the Go module proxy, into a cache OUTSIDE
# the repository (never committed):
#
#   $SIMMESH_BIN_CACHE (default ~/.cache/simmesh/bin)/
#     gateway-conformance-<V>/gateway-conformance.test   the suite (conformance/gateway), V from
#                                                        conformance/gateway/go.mod
#     gateway-conformance-<V>/crds/*.yaml                the module's standard-channel CRDs
#                                                        (bundle-version V: the suite checks it)
#     istio-echo-<IV>/{server,client}                    Istio's echo app, static (CGO_ENABLED=0)
#     istio-echo-<IV>/certs/{cert.crt,cert.key}          its test certificate (tests/testdata/certs/dns)
#
# Usage:
#   tools/gateway/build.sh                  build whatever is missing or stale (idempotent)
#   tools/gateway/build.sh conformance|echo only that one (`conformance` includes the CRDs)
#   tools/gateway/build.sh --print-dir conformance|echo
#                                           print that directory (builds nothing)
#   tools/gateway/build.sh --check          exit 1 unless everything is built and current
#   tools/gateway/build.sh --force [NAME]   rebuild even if current
#   -v | --verbose                          stream the go command's output (default: a log file)
#
# The suite binary is rebuilt when conformance/gateway/{go.mod,go.sum,*.go} change (their hash
# is kept beside it). Builds run under `nice -n 19` (the machine is shared), except under CI
# (CI=true); GATEWAY_BINS_NICE overrides. Cold, on a shared 2-core machine: the suite ~7 min,
# the echo app ~3.5 min (docs/gamma-conformance-notes.md).
# Environment: SIMMESH_BIN_CACHE, GOMODCACHE/GOCACHE (the go defaults), GOTOOLCHAIN (local).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"

SUITE_DIR=$ROOT/conformance/gateway
CACHE=${SIMMESH_BIN_CACHE:-$HOME/.cache/simmesh/bin}
ECHO_PKG=istio.io/istio/pkg/test/echo/cmd

log() { printf '[gateway-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# The version required for MODULE in conformance/gateway/go.mod.
required_version() {
    awk -v m="$1" '($1 == m && $2 ~ /^v/) || ($1 == "require" && $2 == m) {
        print ($1 == "require") ? $3 : $2; exit }' "$SUITE_DIR/go.mod"
}

suite_version() {
    local v api
    v=$(required_version sigs.k8s.io/gateway-api/conformance)
    api=$(required_version sigs.k8s.io/gateway-api)
    [ -n "$v" ] || die "conformance/gateway/go.mod requires no sigs.k8s.io/gateway-api/conformance"
    [ "$v" = "$api" ] || die "conformance/gateway/go.mod: sigs.k8s.io/gateway-api $api and" \
        "sigs.k8s.io/gateway-api/conformance $v differ (they must be the same version)"
    echo "$v"
}

SUITE_VERSION=$(suite_version)
SUITE_OUT=$CACHE/gateway-conformance-$SUITE_VERSION
ECHO_OUT=$CACHE/istio-echo-$ISTIO_ECHO_VERSION

suite_inputs_hash() {
    (cd "$SUITE_DIR" && cat go.mod go.sum ./*.go) | sha256sum | cut -c1-16
}

suite_current() {
    [ -x "$SUITE_OUT/gateway-conformance.test" ] && [ -f "$SUITE_OUT/crds/.complete" ] &&
        [ "$(cat "$SUITE_OUT/.inputs" 2>/dev/null)" = "$(suite_inputs_hash)" ]
}

echo_current() {
    [ -x "$ECHO_OUT/server" ] && [ -x "$ECHO_OUT/client" ] && [ -f "$ECHO_OUT/certs/cert.key" ]
}

# ---------------------------------------------------------------- arguments
FORCE=0
VERBOSE=0
NAMES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --print-dir)
            case "${2:-}" in
                conformance) echo "$SUITE_OUT" ;;
                echo) echo "$ECHO_OUT" ;;
                *) echo "usage: $0 --print-dir conformance|echo" >&2; exit 2 ;;
            esac
            exit 0 ;;
        --check)
            rc=0
            if suite_current; then echo "ok      $SUITE_OUT"; else echo "missing $SUITE_OUT (or stale)"; rc=1; fi
            if echo_current; then echo "ok      $ECHO_OUT"; else echo "missing $ECHO_OUT"; rc=1; fi
            exit $rc ;;
        --force) FORCE=1 ;;
        -v|--verbose) VERBOSE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        conformance|echo) NAMES+=("$1") ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=(conformance echo)

# ---------------------------------------------------------------- go environment
command -v go >/dev/null || die "the go command is required"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOWORK=off
export CGO_ENABLED=0
if [ "${CI:-}" = true ]; then NICE=${GATEWAY_BINS_NICE:-0}; else NICE=${GATEWAY_BINS_NICE:-19}; fi
GOMODCACHE=$(GOFLAGS=-mod=mod go env GOMODCACHE)

mkdir -p "$CACHE/logs"
exec 9>"$CACHE/.gateway-bins.lock"
if command -v flock >/dev/null; then
    flock -n 9 || { log "another gateway build holds $CACHE/.gateway-bins.lock; waiting"; flock 9; }
fi

# run_go LOGFILE CMD...: a go command under nice, output to the log (or streamed with -v)
run_go() {
    local logfile=$1; shift
    echo "+ $*" >>"$logfile"
    if [ "$VERBOSE" = 1 ]; then
        nice -n "$NICE" "$@" 2>&1 | tee -a "$logfile"
        return "${PIPESTATUS[0]}"
    fi
    nice -n "$NICE" "$@" >>"$logfile" 2>&1
}

# with_log NAME LOGFILE CMD...: run, and on failure show the log's tail
with_log() {
    local name=$1 logfile=$2; shift 2
    if ! "$@"; then
        tail -n 30 "$logfile" >&2
        die "$name failed (log: $logfile)"
    fi
}

# ---------------------------------------------------------------- builders
build_conformance() {
    local logfile=$CACHE/logs/gateway-conformance-$SUITE_VERSION.log
    : >"$logfile"
    mkdir -p "$SUITE_OUT"
    log "conformance: sigs.k8s.io/gateway-api/conformance@$SUITE_VERSION -> $SUITE_OUT (log: $logfile)"
    # go.sum is committed: -mod=readonly, so a build never edits the repository
    (cd "$SUITE_DIR" && GOFLAGS=-mod=readonly run_go "$logfile" go mod download) ||
        with_log "go mod download" "$logfile" false
    (cd "$SUITE_DIR" && GOFLAGS=-mod=readonly run_go "$logfile" \
        go test -c -trimpath -o "$SUITE_OUT/gateway-conformance.test.tmp" ./...) ||
        with_log "go test -c" "$logfile" false
    mv "$SUITE_OUT/gateway-conformance.test.tmp" "$SUITE_OUT/gateway-conformance.test"

    # The CRDs of the same module version (standard channel): the suite refuses CRDs whose
    # gateway.networking.k8s.io/bundle-version differs from its own.
    local src=$GOMODCACHE/sigs.k8s.io/gateway-api@$SUITE_VERSION/config/crd/standard
    [ -d "$src" ] || die "no $src (go mod download should have fetched sigs.k8s.io/gateway-api@$SUITE_VERSION)"
    rm -rf "$SUITE_OUT/crds" && mkdir -p "$SUITE_OUT/crds"
    cp "$src"/*.yaml "$SUITE_OUT/crds/"
    chmod u+w "$SUITE_OUT/crds"/*.yaml
    grep -L "bundle-version: $SUITE_VERSION" "$SUITE_OUT/crds"/*.yaml | grep . >&2 &&
        die "CRDs without bundle-version $SUITE_VERSION in $src"
    touch "$SUITE_OUT/crds/.complete"
    suite_inputs_hash >"$SUITE_OUT/.inputs"
}

build_echo() {
    local logfile=$CACHE/logs/istio-echo-$ISTIO_ECHO_VERSION.log
    : >"$logfile"
    mkdir -p "$ECHO_OUT"
    log "echo: $ECHO_PKG/{server,client}@$ISTIO_ECHO_VERSION -> $ECHO_OUT (log: $logfile)"
    # `go install pkg@version`: Istio's own go.mod decides every dependency (it has no replace
    # directives), and no module of ours is involved.
    local tmp; tmp=$(mktemp -d "$ECHO_OUT/.bin.XXXXXX")
    (cd "$tmp" && GOFLAGS=-mod=mod GOBIN=$tmp run_go "$logfile" go install -trimpath -ldflags="-s -w" \
        "$ECHO_PKG/server@$ISTIO_ECHO_VERSION" "$ECHO_PKG/client@$ISTIO_ECHO_VERSION") ||
        { rm -rf "$tmp"; with_log "go install" "$logfile" false; }
    mv "$tmp/server" "$ECHO_OUT/server" && mv "$tmp/client" "$ECHO_OUT/client"
    rm -rf "$tmp"
    # The image's /cert.crt and /cert.key (Istio's Dockerfile.app: dns/cert-chain.pem, dns/key.pem).
    local certs=$GOMODCACHE/istio.io/istio@$ISTIO_ECHO_VERSION/tests/testdata/certs/dns
    [ -f "$certs/key.pem" ] || die "no $certs/key.pem"
    mkdir -p "$ECHO_OUT/certs"
    install -m 0644 "$certs/cert-chain.pem" "$ECHO_OUT/certs/cert.crt"
    install -m 0644 "$certs/key.pem" "$ECHO_OUT/certs/cert.key"
}

T0=$(date +%s)
for name in "${NAMES[@]}"; do
    case "$name" in
        conformance) current=suite_current; out=$SUITE_OUT ;;
        echo) current=echo_current; out=$ECHO_OUT ;;
    esac
    if [ "$FORCE" = 0 ] && $current; then
        log "$name: current ($out)"
        continue
    fi
    t=$(date +%s)
    "build_$name"
    log "$name: built in $(fmt_secs $(($(date +%s) - t)))"
done
log "done in $(fmt_secs $(($(date +%s) - T0)))"
