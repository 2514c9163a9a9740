#!/usr/bin/env bash
# Debian root filesystems for the offline images, made with debootstrap from the Debian mirror
# (the only place packages come from), cached as tarballs:
#   $SIMMESH_CACHE/kind/rootfs/<name>-<suite>-<hash of the package list>.tar
#
#   tools/kind/rootfs.sh NAME      build it unless cached; print the tarball's path
#
# NAME: node    systemd, containerd, runc, the CNI plugins, iptables ... (the kind node image)
#       python  python3 and nftables (the base of the simmesh image: `make image` offline)
#       netbase iptables and conntrack (the base of the kube-proxy image)
#       netpol  iptables, ipset and conntrack (the base of the NetworkPolicy enforcer's image,
#               tools/kind/netpol.sh: kube-router runs iptables-restore and ipset)
# Downloaded .debs are kept in $SIMMESH_CACHE/kind/debs, so a rebuild needs no download.
set -euo pipefail
LOG_TAG=rootfs
. "$(dirname "$0")/lib.sh"

packages() {
    case "$1" in
        # what kind's base image installs (images/base/Dockerfile), from Debian instead of
        # kind's own builds: containerd 1.6, runc 1.1 and the CNI plugins come as packages
        node) echo systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod \
            libseccomp2 pigz bash ca-certificates curl jq procps socat containerd runc \
            containernetworking-plugins ;;
        python) echo python3 nftables ;;  # nft: the GAMMA capture agent (simmesh capture)
        netbase) echo iptables conntrack ;;
        netpol) echo iptables ipset conntrack ;;
        *) die "unknown rootfs $1 (node, python, netbase or netpol)" ;;
    esac
}

build() {
    local name=$1 pkgs hash out
    pkgs=$(packages "$name")
    hash=$(echo "$DEBIAN_SUITE $DEBIAN_MIRROR $pkgs" | sha256sum | cut -c1-10)
    out=$KIND_CACHE/rootfs/$name-$DEBIAN_SUITE-$hash.tar
    if [ -s "$out" ]; then log "$name: cached ($out)"; echo "$out"; return; fi
    command -v debootstrap >/dev/null || {
        log "installing debootstrap with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    mkdir -p "$KIND_CACHE/rootfs" "$KIND_CACHE/debs"
    TREE=$(mktemp -d "$KIND_CACHE/rootfs/.$name.XXXXXX")
    local tree=$TREE
    trap 'rm -rf "$TREE"' EXIT
    log "$name: debootstrap $DEBIAN_SUITE (minbase + ${pkgs// /,}); log: $out.log"
    if ! with_heartbeat debootstrap --variant=minbase --cache-dir="$KIND_CACHE/debs" \
        --include="${pkgs// /,}" "$DEBIAN_SUITE" "$tree" "$DEBIAN_MIRROR" >"$out.log" 2>&1; then
        tail -n 20 "$out.log" >&2
        die "$name: debootstrap failed (log: $out.log)"
    fi
    # an image needs no package lists, caches, docs or man pages
    rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/* "$tree"/usr/share/doc/* \
        "$tree"/usr/share/man/* "$tree"/usr/share/info/* "$tree"/usr/share/locale/* \
        "$tree"/var/log/* "$tree"/debootstrap
    tar -C "$tree" --numeric-owner -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    log "$name: $(du -h "$out" | cut -f1) -> $out"
    echo "$out"
}

[ $# -eq 1 ] || { echo "usage: $0 node|python|netbase|netpol" >&2; exit 2; }
build "$1"
