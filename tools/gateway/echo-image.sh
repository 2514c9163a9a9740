#!/usr/bin/env bash
# Build, without pulling anything, the echo image the Gateway API mesh conformance suite runs in
# its pods: the name its manifests use (conformance/mesh/manifests.yaml of the pinned suite,
# registry.k8s.io/gateway-api/echo-advanced:v1.5.1 for v1.6.3, with imagePullPolicy
# IfNotPresent), so a node that has it loaded never pulls. Upstream that image is Istio's
# gcr.io/istio-release/app:1.21.2 re-tagged (docker/Dockerfile.echo-advanced in
# sigs.k8s.io/gateway-api); this one is made like Istio's pkg/test/echo/docker/Dockerfile.app:
#
#   /usr/local/bin/server, /usr/local/bin/client   tools/gateway/build.sh echo (static Go)
#   /cert.crt, /cert.key                           Istio's tests/testdata/certs/dns
#   USER 1338 (user "application", as Istio's),  ENTRYPOINT ["/usr/local/bin/server"]
#   PATH with /usr/local/bin                       the suite execs `client ...` in the pod
#
# on the Debian rootfs `netbase` (tools/kind/rootfs.sh: minbase + iptables, conntrack; it gives
# a shell for debugging, as Istio's base image does), `docker import`ed as tools/kind/node-image.sh
# makes its component images. The manifests' args (--tcp=9090 --port=8080 --grpc=7070
# --port=8443 --tls=8443 --crt=/cert.crt --key=/cert.key) come from the Deployments.
#
#   tools/gateway/echo-image.sh [IMAGE]             docker import; print the image name
#   tools/gateway/echo-image.sh --save FILE [IMAGE] also `docker save` it to FILE (for
#                                                   `kind load image-archive` or a preload)
#   tools/gateway/echo-image.sh --tree DIR          only write the image's filesystem to DIR
#                                                   (no Docker; for inspection and tests)
#   tools/gateway/echo-image.sh --print             print the image name only
#
# Load it into the kind cluster with `kind load docker-image IMAGE --name simmesh` (as
# tools/kind/deploy.sh does for the simmesh image).
set -euo pipefail
LOG_TAG=echo-image
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../kind/lib.sh
. "$HERE/../kind/lib.sh"

SUITE_DIR=$(bash "$HERE/build.sh" --print-dir conformance)
SUITE_VERSION=${SUITE_DIR##*/gateway-conformance-}

# The one image the pinned suite's mesh manifests name.
suite_image() {
    local manifests images
    manifests=$(cd "$ROOT/conformance/gateway" && GOFLAGS=-mod=mod go env GOMODCACHE)
    manifests=$manifests/sigs.k8s.io/gateway-api/conformance@$SUITE_VERSION/mesh/manifests.yaml
    [ -f "$manifests" ] || die "no $manifests (run tools/gateway/build.sh conformance)"
    images=$(sed -n 's/^[[:space:]]*image:[[:space:]]*//p' "$manifests" | tr -d '"' | sort -u)
    [ "$(echo "$images" | wc -l)" = 1 ] || die "the mesh manifests name several images: $images"
    echo "$images"
}

# tree DIR: the image's filesystem
tree() {
    local dir=$1 echo_dir rootfs
    bash "$HERE/build.sh" echo >&2
    echo_dir=$(bash "$HERE/build.sh" --print-dir echo)
    rootfs=$(bash "$ROOT/tools/kind/rootfs.sh" netbase)
    mkdir -p "$dir"
    tar -C "$dir" -xf "$rootfs"
    # the rootfs tarball's ./ is 0700 (debootstrap's mktemp -d): uid 1338 could not reach /usr
    chmod 0755 "$dir"
    mkdir -p "$dir/usr/local/bin" "$dir/tmp" "$dir/home/application"
    chmod 1777 "$dir/tmp"
    install -m 0755 "$echo_dir/server" "$echo_dir/client" "$dir/usr/local/bin/"
    install -m 0644 "$echo_dir/certs/cert.crt" "$dir/cert.crt"
    # readable by uid 1338, as in Istio's image (a test certificate, not a secret)
    install -m 0644 "$echo_dir/certs/cert.key" "$dir/cert.key"
    grep -q '^application:' "$dir/etc/passwd" ||
        echo 'application:x:1338:1338::/home/application:/bin/sh' >>"$dir/etc/passwd"
    grep -q '^application:' "$dir/etc/group" || echo 'application:x:1338:' >>"$dir/etc/group"
    chown 1338:1338 "$dir/home/application"
}

main() {
    local save="" tree_dir="" image=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --print) suite_image; return ;;
            --save) save=$2; shift ;;
            --tree) tree_dir=$2; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; return ;;
            -*) die "unknown option $1 (see --help)" ;;
            *) image=$1 ;;
        esac
        shift
    done
    if [ -n "$tree_dir" ]; then
        tree "$tree_dir"
        log "image filesystem in $tree_dir ($(du -sh "$tree_dir" | cut -f1))"
        return
    fi
    [ -n "$image" ] || image=$(suite_image)
    bash "$ROOT/tools/kind/docker.sh" up
    local work; work=$(mktemp -d "${TMPDIR:-/tmp}/simmesh-echo-image.XXXXXX")
    WORK_DIR=$work
    trap 'rm -rf "$WORK_DIR"' EXIT
    step "filesystem" tree "$work/tree"
    tar -C "$work/tree" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'USER 1338' \
        --change 'ENTRYPOINT ["/usr/local/bin/server"]' \
        - "$image" >/dev/null
    log "built $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
    if [ -n "$save" ]; then
        docker save "$image" -o "$save"
        log "saved to $save ($(du -h "$save" | cut -f1))"
    fi
    echo "$image"
}

main "$@"
