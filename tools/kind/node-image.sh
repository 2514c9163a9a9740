#!/usr/bin/env bash
# Build the offline kind node image: Kubernetes $KUBERNETES_VERSION with every image it needs
# preloaded, from Debian packages, Go modules and kind's own files; nothing is ever pulled.
#
#   tools/kind/node-image.sh          build unless the image for these inputs exists; prints it
#   tools/kind/node-image.sh --print  print the image name only
#
# Steps (each cached): the node components (tools/k8s-bins.sh node: kubelet, kubeadm, kubectl,
# kube-apiserver, -controller-manager, -scheduler, kube-proxy) plus etcd and CoreDNS; kind
# (built from the Go module proxy, tools/kind/kind.sh), whose module holds kind's node base
# files; pause, compiled statically from build/pause/linux/pause.c of k8s.io/kubernetes;
# Debian rootfs trees (tools/kind/rootfs.sh node and netbase). Then:
#   1. component images: `docker import` of tiny trees holding the static binary (kube-proxy on
#      the netbase rootfs, for iptables), tagged with the names kubeadm asks for with the
#      image tags of deploy/kind/offline-patches.yaml (etcd and CoreDNS at their real versions);
#   2. the node: deploy/kind/node/Dockerfile on the imported node rootfs;
#   3. preload: containerd in a build container imports the component images (`ctr -n k8s.io
#      images import`, as kind's node-image builder does), and the container is committed;
#   4. kind's STOPSIGNAL and our ENTRYPOINT (simmesh-node-init, then kind's entrypoint).
set -euo pipefail
LOG_TAG=node-image
. "$(dirname "$0")/lib.sh"

NODE_DIR=$ROOT/deploy/kind/node
BINS=$(bash "$ROOT/tools/k8s-bins.sh" --print-dir)

inputs_hash() {
    {
        echo "$KUBERNETES_VERSION $ETCD_VERSION $COREDNS_VERSION $KIND_VERSION $DEBIAN_SUITE"
        cat "$0" "$NODE_DIR"/* "$ROOT/deploy/kind/offline-patches.yaml" "$ROOT/tools/kind/rootfs.sh"
    } | sha256sum | cut -c1-12
}
IMAGE=simmesh.local/kind-node:$KUBERNETES_VERSION-$(inputs_hash)
if [ "${1:-}" = "--print" ]; then echo "$IMAGE"; exit 0; fi

# The image names kubeadm uses with the offline patches (etcd and CoreDNS tags replaced).
kubeadm_images() {
    local cfg; cfg=$(mktemp)
    { echo "apiVersion: kubeadm.k8s.io/v1beta4"; echo "kubernetesVersion: $KUBERNETES_VERSION"
      sed -n '/^    kind: ClusterConfiguration/,/^  - |/p' "$ROOT/deploy/kind/offline-patches.yaml" |
          sed '/^  - |/d;s/^    //' | render; } >"$cfg"
    "$BINS/kubeadm" config images list --config "$cfg" 2>/dev/null
    rm -f "$cfg"
}

render() { sed -e "s/@ETCD_VERSION@/$ETCD_VERSION/g" -e "s/@COREDNS_VERSION@/$COREDNS_VERSION/g"; }

build_pause() {
    local tag=$1 out=$KIND_CACHE/pause-$1/pause
    if [ ! -x "$out" ]; then
        local src; src=$(cd "$ROOT" && GOFLAGS=-mod=mod go env GOMODCACHE)/k8s.io/kubernetes@$KUBERNETES_VERSION/build/pause/linux/pause.c
        [ -f "$src" ] || die "no $src (tools/k8s-bins.sh downloads the k8s.io/kubernetes module)"
        command -v gcc >/dev/null || { log "installing gcc and libc6-dev"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; }
        mkdir -p "$(dirname "$out")"
        gcc -Os -Wall -Werror -static -DVERSION="v$tag-simmesh" -o "$out.tmp" "$src"
        strip "$out.tmp" && mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# component_image NAME(=kubeadm's image) BINARY PATH_IN_IMAGE [BASE_TAR] [--change ...]...
component_image() {
    local name=$1 binary=$2 path=$3 base=$4; shift 4
    local tree; tree=$(mktemp -d "$WORK/img.XXXXXX")
    if [ -n "$base" ]; then tar -C "$tree" -xf "$base"; fi
    mkdir -p "$tree$(dirname "$path")" "$tree/tmp" "$tree/etc"
    chmod 1777 "$tree/tmp"
    install -m 0755 "$binary" "$tree$path"
    tar -C "$tree" --numeric-owner -c . | docker import "$@" - "$name" >/dev/null
    docker save "$name" -o "$WORK/images/$(echo "$name" | tr '/:' '__').tar"
    docker rmi "$name" >/dev/null
    rm -rf "$tree"
    log "  $name ($(du -h "$WORK/images/$(echo "$name" | tr '/:' '__').tar" | cut -f1))"
}

component_images() {
    local images image pause_tag
    mkdir -p "$WORK/images"
    images=$(kubeadm_images)
    [ -n "$images" ] || die "kubeadm config images list printed nothing"
    local path=/usr/local/bin chg='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    for image in $images; do
        case "$image" in
            */kube-apiserver:*|*/kube-controller-manager:*|*/kube-scheduler:*)
                local c; c=$(basename "${image%%:*}")
                component_image "$image" "$BINS/$c" "$path/$c" "" --change "$chg" ;;
            */kube-proxy:*)
                component_image "$image" "$BINS/kube-proxy" "$path/kube-proxy" \
                    "$(bash "$ROOT/tools/kind/rootfs.sh" netbase)" --change "$chg" ;;
            */etcd:*)
                component_image "$image" "$BINS/etcd" "$path/etcd" "" --change "$chg" ;;
            */coredns:*)
                component_image "$image" "$BINS/coredns" /coredns "" --change "$chg" \
                    --change 'ENTRYPOINT ["/coredns"]' ;;
            */pause:*)
                pause_tag=${image##*:}
                component_image "$image" "$(build_pause "$pause_tag")" /pause "" \
                    --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' ;;
            *) die "kubeadm asks for an image this script cannot build: $image" ;;
        esac
    done
    [ -n "${pause_tag:-}" ] || die "kubeadm names no pause image"
    echo "$pause_tag" >"$WORK/pause-tag"
    printf '%s\n' $images >"$WORK/images.list"
}

node_base() {
    local rootfs rootfs_image ctx=$WORK/context
    rootfs=$(bash "$ROOT/tools/kind/rootfs.sh" node)
    rootfs_image=simmesh.local/kind-rootfs:$(basename "$rootfs" .tar)
    if ! docker image inspect "$rootfs_image" >/dev/null 2>&1; then
        docker import "$rootfs" "$rootfs_image" >/dev/null
    fi
    local kind_src; kind_src=$(bash "$ROOT/tools/kind/kind.sh" --source)
    mkdir -p "$ctx/bin" "$ctx/simmesh"
    cp -r "$kind_src/images/base/files" "$ctx/kind-base"
    chmod -R u+w "$ctx/kind-base"
    for b in kubelet kubeadm kubectl; do install -m 0755 "$BINS/$b" "$ctx/bin/$b"; done
    cp "$NODE_DIR"/simmesh-node-init "$NODE_DIR"/containerd.toml "$NODE_DIR"/default-*.yaml "$ctx/simmesh/"
    DOCKER_BUILDKIT=0 docker build -q --force-rm -f "$NODE_DIR/Dockerfile" \
        --build-arg "ROOTFS_IMAGE=$rootfs_image" --build-arg "KUBERNETES_VERSION=$KUBERNETES_VERSION" \
        --build-arg "PAUSE_TAG=$(cat "$WORK/pause-tag")" -t "$IMAGE-base" "$ctx" >/dev/null
}

preload() {
    local id
    id=$(docker run -d --entrypoint sleep --security-opt seccomp=unconfined "$IMAGE-base" infinity)
    BUILD_CONTAINER=$id
    docker exec "$id" bash -c 'nohup containerd >/var/log/containerd-build.log 2>&1 &
        for i in $(seq 1 30); do ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1' ||
        die "containerd did not start in the build container"
    local tar
    for tar in "$WORK"/images/*.tar; do
        docker exec -i "$id" ctr --namespace=k8s.io images import --all-platforms --no-unpack \
            - <"$tar" >/dev/null
    done
    docker exec "$id" ctr --namespace=k8s.io images list -q | grep -v '^sha256:' | sort >"$WORK/preloaded.list"
    if ! diff <(sort "$WORK/images.list") "$WORK/preloaded.list" >&2; then
        die "preloaded images differ from what kubeadm asks for"
    fi
    docker exec "$id" bash -c 'pkill containerd; sleep 1; rm -f /var/log/containerd-build.log'
    docker commit "$id" "$IMAGE-preloaded" >/dev/null
    docker rm -f "$id" >/dev/null
    BUILD_CONTAINER=
    log "  preloaded: $(tr '\n' ' ' <"$WORK/preloaded.list")"
}

finish() {
    DOCKER_BUILDKIT=0 docker build -q --force-rm -t "$IMAGE" - >/dev/null <<DOCKERFILE
FROM $IMAGE-preloaded
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/simmesh-node-init", "/usr/local/bin/entrypoint", "/sbin/init"]
CMD []
LABEL io.simmesh.kubernetes-version="$KUBERNETES_VERSION" io.simmesh.etcd-version="$ETCD_VERSION" \
      io.simmesh.coredns-version="$COREDNS_VERSION"
DOCKERFILE
    docker rmi "$IMAGE-preloaded" "$IMAGE-base" >/dev/null
    # earlier node images (other inputs) that no container uses any more
    local old
    for old in $(docker images --format '{{.Repository}}:{{.Tag}}' simmesh.local/kind-node); do
        [ "$old" = "$IMAGE" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
}

main() {
    bash "$ROOT/tools/kind/docker.sh" up
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then log "present: $IMAGE"; echo "$IMAGE"; return; fi
    step "node binaries (tools/k8s-bins.sh node etcd coredns)" \
        with_heartbeat bash "$ROOT/tools/k8s-bins.sh" node etcd coredns
    step "kind $KIND_VERSION" bash "$ROOT/tools/kind/kind.sh" >/dev/null
    WORK=$(mktemp -d "$KIND_CACHE/.node-image.XXXXXX")
    BUILD_CONTAINER=
    trap 'rm -rf "$WORK"; [ -z "$BUILD_CONTAINER" ] || docker rm -f "$BUILD_CONTAINER" >/dev/null' EXIT
    step "component images" component_images
    step "node image base (Dockerfile)" node_base
    step "preload images with ctr" preload
    step "entrypoint" finish
    log "built $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
    echo "$IMAGE"
}

main
