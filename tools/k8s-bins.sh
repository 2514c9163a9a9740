#!/usr/bin/env bash
# Build the binaries of the real-apiserver test harness, and h2spec (the HTTP/2 conformance
# tester run against the proxy's h2c front end, `make h2spec`), from the Go module proxy:
#   kube-apiserver, etcd, coredns, helm, fortio, h2spec
# at the versions pinned in tools/k8s-versions.env; on request (`node`), also the rest of a
# Kubernetes node for the offline kind node image (tools/kind/node-image.sh):
#   kubelet, kubeadm, kubectl, kube-controller-manager, kube-scheduler, kube-proxy
#
# Binaries go to a cache OUTSIDE the repository, keyed by version:
#   ${SIMMESH_BIN_CACHE:-$HOME/.cache/simmesh/bin}/<name>-<version>/<name>
# and a directory of symlinks to all of them:
#   ${SIMMESH_BIN_CACHE:-$HOME/.cache/simmesh/bin}/current-<hash of the versions>/<name>
# Tests find that directory through $SIMMESH_BIN_DIR or `tools/k8s-bins.sh --print-dir`.
#
# Usage:
#   tools/k8s-bins.sh                 build whatever is missing (idempotent), link, print times
#   tools/k8s-bins.sh NAME...         only these (kube-apiserver etcd coredns helm fortio h2spec, or
#                                     kubelet kubeadm kubectl kube-controller-manager
#                                     kube-scheduler kube-proxy)
#   tools/k8s-bins.sh node            the node components above and kube-apiserver
#   tools/k8s-bins.sh --print-dir     print the symlink directory (builds nothing)
#   tools/k8s-bins.sh --check         exit 1 unless every binary is present
#   tools/k8s-bins.sh --force NAME... rebuild even if present
#   -v | --verbose                    stream the go command's output (default: to a log file)
#
# Environment: SIMMESH_BIN_CACHE, GOMODCACHE/GOCACHE (the go defaults persist across runs),
# GOTOOLCHAIN (defaults to local), K8S_BINS_PARALLEL (go -p, default 2).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSIONS_FILE="$HERE/k8s-versions.env"
# shellcheck source=k8s-versions.env
. "$VERSIONS_FILE"

CACHE=${SIMMESH_BIN_CACHE:-$HOME/.cache/simmesh/bin}
ALL_NAMES=(kube-apiserver etcd coredns helm fortio h2spec)
# Not built by default (only the kind node image needs them); same version as kube-apiserver.
NODE_NAMES=(kubelet kubeadm kubectl kube-controller-manager kube-scheduler kube-proxy)

version_of() {
    case "$1" in
        kube-apiserver|kubelet|kubeadm|kubectl|kube-controller-manager|kube-scheduler|kube-proxy)
            echo "$KUBERNETES_VERSION" ;;
        etcd) echo "$ETCD_VERSION" ;;
        coredns) echo "$COREDNS_VERSION" ;;
        helm) echo "$HELM_VERSION" ;;
        fortio) echo "$FORTIO_VERSION" ;;
        h2spec) echo "$H2SPEC_VERSION" ;;
        *) echo "unknown binary: $1" >&2; return 1 ;;
    esac
}

versions_hash() {
    local n
    for n in "${ALL_NAMES[@]}"; do echo "$n=$(version_of "$n")"; done | sha256sum | cut -c1-12
}

CURRENT_DIR="$CACHE/current-$(versions_hash)"
bin_path() { echo "$CACHE/$1-$(version_of "$1")/$1"; }

link_current() {
    mkdir -p "$CURRENT_DIR"
    local n
    for n in "${ALL_NAMES[@]}" "${NODE_NAMES[@]}"; do
        if [ -x "$(bin_path "$n")" ]; then
            ln -sfn "$(bin_path "$n")" "$CURRENT_DIR/$n"
        fi
    done
    cp "$VERSIONS_FILE" "$CURRENT_DIR/k8s-versions.env"
}

log() { printf '[k8s-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---------------------------------------------------------------- arguments
FORCE=0
VERBOSE=0
NAMES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --print-dir)
            # Refresh the links for whatever is already built; build nothing.
            if [ -d "$CACHE" ]; then link_current 2>/dev/null || true; fi
            echo "$CURRENT_DIR"
            exit 0
            ;;
        --check)
            missing=0
            for n in "${ALL_NAMES[@]}"; do
                if [ -x "$(bin_path "$n")" ]; then echo "ok      $(bin_path "$n")"
                else echo "missing $(bin_path "$n")"; missing=1; fi
            done
            exit $missing
            ;;
        --force) FORCE=1 ;;
        -v|--verbose) VERBOSE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        kube-apiserver|etcd|coredns|helm|fortio|h2spec) NAMES+=("$1") ;;
        kubelet|kubeadm|kubectl|kube-controller-manager|kube-scheduler|kube-proxy) NAMES+=("$1") ;;
        node) NAMES+=(kube-apiserver "${NODE_NAMES[@]}") ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL_NAMES[@]}")

# ---------------------------------------------------------------- go environment
command -v go >/dev/null || { echo "k8s-bins: the go command is required" >&2; exit 1; }
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export CGO_ENABLED=0
export GOWORK=off
PAR=${K8S_BINS_PARALLEL:-2}
LDFLAGS_BASE="-s -w"

mkdir -p "$CACHE/logs"
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null; then
    flock -n 9 || { log "another k8s-bins build holds $CACHE/.lock; waiting"; flock 9; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/simmesh-k8s-bins.XXXXXX")
HEARTBEAT_PID=
cleanup() {
    if [ -n "$HEARTBEAT_PID" ]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; fi
    # the go module cache is read-only; the temp dir holds only small generated modules
    chmod -R u+w "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# run_go LOGFILE CMD...: run a go command, output to the log (or streamed with -v)
run_go() {
    local logfile=$1; shift
    echo "+ $*" >>"$logfile"
    if [ "$VERBOSE" = 1 ]; then
        "$@" 2>&1 | tee -a "$logfile"
        return "${PIPESTATUS[0]}"
    fi
    "$@" >>"$logfile" 2>&1
}

# ---------------------------------------------------------------- builders
# Each builder: build_NAME OUT LOGFILE VERSION ; writes the binary to OUT.

# build_k8s_cmd NAME OUT LOGFILE VERSION: k8s.io/kubernetes/cmd/NAME, with the staging modules
# replaced by their published versions (the module's own ./staging replaces do not resolve).
build_k8s_cmd() {
    local name=$1 out=$2 logfile=$3 v=$4
    local minor=${v#v1.}; minor=${minor%%.*}
    local staging_v="v0.${v#v1.}"
    local mod=$WORK/$name
    mkdir -p "$mod"
    log "  $name: fetching k8s.io/kubernetes@$v from the module proxy"
    local gomod
    gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$v" 2>>"$logfile" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [ -f "$gomod" ] || { echo "no go.mod for k8s.io/kubernetes@$v" >>"$logfile"; return 1; }
    local gover godebug staging
    gover=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod" | head -1)
    godebug=$(grep -E '^godebug ' "$gomod" || true)
    # Every staging module that release replaces with ./staging/src/..., exactly as listed.
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")
    [ -n "$staging" ] || { echo "no staging replaces found in $gomod" >>"$logfile"; return 1; }
    log "  $name: $(echo "$staging" | wc -l) staging modules -> $staging_v"
    {
        echo "// generated by tools/k8s-bins.sh; not committed"
        echo "module simmesh.local/k8sbins/$name"
        echo
        echo "go $gover"
        [ -z "$godebug" ] || echo "$godebug"
        echo
        echo "require k8s.io/kubernetes $v"
        echo
        echo "replace ("
        local m
        for m in $staging; do echo "	$m => $m $staging_v"; done
        echo ")"
    } >"$mod/go.mod"
    cp "$mod/go.mod" "$logfile.go.mod"
    log "  $name: resolving dependencies (go get)"
    (cd "$mod" && run_go "$logfile" go get "k8s.io/kubernetes/cmd/$name@$v")
    local vpkg=k8s.io/component-base/version
    local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local ld="$LDFLAGS_BASE -X $vpkg.gitVersion=$v -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
    ld="$ld -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=$date"
    ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1"
    ld="$ld -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    log "  $name: compiling (go build -p $PAR)"
    (cd "$mod" && run_go "$logfile" go build -p "$PAR" -trimpath -ldflags="$ld" -o "$out" \
        "k8s.io/kubernetes/cmd/$name")
}

build_kube_apiserver() { build_k8s_cmd kube-apiserver "$@"; }
build_kubelet() { build_k8s_cmd kubelet "$@"; }
build_kubeadm() { build_k8s_cmd kubeadm "$@"; }
build_kubectl() { build_k8s_cmd kubectl "$@"; }
build_kube_controller_manager() { build_k8s_cmd kube-controller-manager "$@"; }
build_kube_scheduler() { build_k8s_cmd kube-scheduler "$@"; }
build_kube_proxy() { build_k8s_cmd kube-proxy "$@"; }

build_etcd() {
    # etcd's modules carry local replace directives, so `go install pkg@v` refuses them:
    # use a small main around etcdmain (identical to etcd's own server/main.go).
    local out=$1 logfile=$2 v=$3
    local mod=$WORK/etcd
    mkdir -p "$mod"
    cat >"$mod/main.go" <<'GO'
// generated by tools/k8s-bins.sh; not committed
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    printf '// generated by tools/k8s-bins.sh; not committed\nmodule simmesh.local/k8sbins/etcd\n\ngo %s\n' \
        "$(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1.0/')" >"$mod/go.mod"
    log "  etcd: resolving dependencies (go get)"
    (cd "$mod" && run_go "$logfile" go get "go.etcd.io/etcd/server/v3@$v" "go.etcd.io/etcd/api/v3@$v" \
        "go.etcd.io/etcd/client/pkg/v3@$v" "go.etcd.io/etcd/client/v3@$v" "go.etcd.io/etcd/pkg/v3@$v")
    (cd "$mod" && run_go "$logfile" go mod tidy)
    log "  etcd: compiling (go build -p $PAR)"
    (cd "$mod" && run_go "$logfile" go build -p "$PAR" -trimpath -ldflags="$LDFLAGS_BASE" -o "$out" .)
}

# go install PKG@VERSION builds with the module's own go.mod as the main module (its exact
# dependency versions); the binary lands in a scratch GOBIN and is moved to OUT.
go_install() {
    local out=$1 logfile=$2 pkg=$3 v=$4 ld=$5
    local name; name=$(basename "$(dirname "$out")"); name=${name%-"$v"}
    local gobin=$WORK/gobin-$name
    mkdir -p "$gobin"
    log "  $name: go install $pkg@$v (-p $PAR)"
    # -mod=mod is not allowed with `go install pkg@version`
    (cd "$WORK" && GOFLAGS="${GOFLAGS//-mod=mod/}" GOBIN="$gobin" run_go "$logfile" \
        go install -p "$PAR" -trimpath -ldflags="$ld" "$pkg@$v")
    local built
    built=$(find "$gobin" -maxdepth 1 -type f | head -1)
    [ -n "$built" ] || { echo "go install produced no binary" >>"$logfile"; return 1; }
    mv -f "$built" "$out"
}

build_coredns() { go_install "$1" "$2" github.com/coredns/coredns "$3" "$LDFLAGS_BASE"; }
build_helm() {
    go_install "$1" "$2" helm.sh/helm/v3/cmd/helm "$3" \
        "$LDFLAGS_BASE -X helm.sh/helm/v3/internal/version.version=$3 -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
}
build_fortio() { go_install "$1" "$2" fortio.org/fortio "$3" "$LDFLAGS_BASE"; }

build_h2spec() {
    # h2spec has no go.mod (the module proxy serves it as +incompatible), so `go install
    # pkg@v` would take whatever its dependencies are at the time: build it in a small module
    # that pins them (tools/k8s-versions.env), like etcd above.
    local out=$1 logfile=$2 v=$3
    local mod=$WORK/h2spec
    mkdir -p "$mod"
    {
        echo "// generated by tools/k8s-bins.sh; not committed"
        echo "module simmesh.local/k8sbins/h2spec"
        echo
        echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1.0/')"
        echo
        echo "require ("
        echo "	github.com/summerwind/h2spec $v+incompatible"
        echo "	golang.org/x/net $H2SPEC_X_NET_VERSION"
        echo "	github.com/spf13/cobra $H2SPEC_COBRA_VERSION"
        echo "	github.com/fatih/color $H2SPEC_COLOR_VERSION"
        echo ")"
    } >"$mod/go.mod"
    log "  h2spec: compiling github.com/summerwind/h2spec/cmd/h2spec@$v (go build -p $PAR)"
    (cd "$mod" && run_go "$logfile" go build -p "$PAR" -trimpath -ldflags="$LDFLAGS_BASE" \
        -o "$out" github.com/summerwind/h2spec/cmd/h2spec)
}

# ---------------------------------------------------------------- main
T0=$(date +%s)
log "cache: $CACHE  ($(go version | cut -d' ' -f3-), GOMODCACHE=$(go env GOMODCACHE))"
declare -A RESULT
FAILED=0
for n in "${NAMES[@]}"; do
    v=$(version_of "$n")
    dest=$(bin_path "$n")
    if [ -x "$dest" ] && [ "$FORCE" = 0 ]; then
        log "$n $v: present, skipping ($dest)"
        RESULT[$n]="cached"
        continue
    fi
    mkdir -p "$(dirname "$dest")"
    logfile="$CACHE/logs/$n-$v.log"
    : >"$logfile"
    log "$n $v: building (log: $logfile)"
    t=$(date +%s)
    (
        exec 9>&-  # do not hold the cache lock
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        while :; do
            sleep 60 & sp=$!
            wait "$sp"
            log "  $n: still building ($(fmt_secs $(($(date +%s) - t))))"
        done
    ) &
    HEARTBEAT_PID=$!
    tmp="$dest.tmp.$$"
    rc=0
    "build_${n//-/_}" "$tmp" "$logfile" "$v" || rc=$?
    kill "$HEARTBEAT_PID" 2>/dev/null || true
    wait "$HEARTBEAT_PID" 2>/dev/null || true
    HEARTBEAT_PID=
    secs=$(($(date +%s) - t))
    if [ "$rc" = 0 ] && [ -s "$tmp" ]; then
        chmod 755 "$tmp"
        mv -f "$tmp" "$dest"
        echo "$secs" >"$(dirname "$dest")/build-seconds"
        log "$n $v: built in $(fmt_secs "$secs") -> $dest ($(du -h "$dest" | cut -f1))"
        RESULT[$n]="built in $(fmt_secs "$secs")"
    else
        rm -f "$tmp"
        log "$n $v: FAILED after $(fmt_secs "$secs"); last lines of $logfile:"
        tail -n 30 "$logfile" >&2 || true
        RESULT[$n]="FAILED"
        FAILED=1
    fi
done

link_current
TOTAL=$(($(date +%s) - T0))
log "summary:"
for n in "${NAMES[@]}"; do log "  $(printf '%-15s' "$n") $(printf '%-9s' "$(version_of "$n")") ${RESULT[$n]}"; done
log "binaries: $CURRENT_DIR  (export SIMMESH_BIN_DIR=$CURRENT_DIR)"
log "total elapsed: $(fmt_secs "$TOTAL")"
exit $FAILED
