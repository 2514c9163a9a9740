#!/usr/bin/env bash
# Build the simmesh image (the root Dockerfile) without network access during the build.
#
#   tools/kind/image.sh [IMAGE]        default simmesh/simmesh:dev; prints the image name
#   tools/kind/image.sh --sim [IMAGE]  the Dockerfile's `sim` target (the sweep workers'
#                                      image, deploy/dask), default simmesh/simmesh-sim:dev
#
# 1. Wheels on the host: simmesh itself (pip wheel) and its runtime dependencies plus the
#    `tracing`, `gate` and `sim` extras (the default target installs the first two), downloaded for CPython 3.11 on manylinux x86_64 (pip download, from PyPI;
#    cached in $SIMMESH_CACHE/image/deps-<hash of pyproject.toml>), into build/wheels.
# 2. The base: offline (see tools/kind/lib.sh), a Debian bookworm python3 rootfs made by
#    debootstrap (tools/kind/rootfs.sh python) and `docker import`ed as simmesh.local/python;
#    otherwise the public python:3.11-slim-bookworm.
# 3. docker build with the classic builder, which uses a local base image as it is.
set -euo pipefail
LOG_TAG=image
. "$(dirname "$0")/lib.sh"

TARGET=runtime
if [ "${1:-}" = --sim ]; then TARGET=sim; shift; fi
if [ $TARGET = sim ]; then IMAGE=${1:-simmesh/simmesh-sim:dev}; else IMAGE=${1:-simmesh/simmesh:dev}; fi
EXTRAS=(tracing gate sim)
PYTHON=${PYTHON:-python3}
IMAGE_CACHE=$CACHE/image
WHEELS=$ROOT/build/wheels
# CPython 3.11 on glibc 2.36 (bookworm): pip matches platform tags exactly, so list them all.
PIP_TARGET=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)
for v in $(seq 36 -1 5); do PIP_TARGET+=(--platform "manylinux_2_${v}_x86_64"); done
PIP_TARGET+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

# requirements PYPROJECT EXTRA...: the package's runtime requirements and those of the extras.
requirements() {
    "$PYTHON" - "$@" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project.get("optional-dependencies", {})
print("\n".join(project["dependencies"] + [r for e in sys.argv[2:] for r in extras[e]]))
PY
}

# source_hash: a hash of every file that goes into simmesh's wheel (the packages' files as git
# sees them, tracked or not, the build files, the compile mode and the Python); fails outside a
# git checkout, and then nothing is cached.
source_hash() {
    local files
    files=$(git -C "$ROOT" ls-files -co --exclude-standard -- mesh sim conformance setup.py pyproject.toml 2>/dev/null) || return 1
    [ -n "$files" ] || return 1
    { (cd "$ROOT" && echo "$files" | sort | while IFS= read -r f; do [ -f "$f" ] && { echo "$f"; cat "$f"; }; done)
      echo "SIMMESH_COMPILE=${SIMMESH_COMPILE:-auto} $("$PYTHON" -VV) built from a copy"; } |
        sha256sum | cut -c1-16
}

# source_files: what the wheel is built from: the files git sees (tracked or not, ignored ones
# left out: no compiled module, no build/), or, outside a git checkout, every file but build/
source_files() {
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$ROOT" ls-files -co --exclude-standard | while IFS= read -r f; do
            [ -f "$ROOT/$f" ] && echo "$f"
        done
    else
        (cd "$ROOT" && find . -path ./build -prune -o -path ./.venv -prune -o -path ./out -prune \
            -o -name '*.so' -prune -o -type f -print)
    fi
}

wheels() {
    local hash deps
    hash=$( (cat "$ROOT/pyproject.toml"; echo "${EXTRAS[*]}") | sha256sum | cut -c1-12)
    deps=$IMAGE_CACHE/deps-$hash
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # simmesh's own wheel (mypyc: about 1.5 min) is kept per hash of what goes into it, so the
    # runtime and sim targets of one tree, and a rebuild of an unchanged tree, compile once
    local src self_cache=""
    if src=$(source_hash); then self_cache=$IMAGE_CACHE/self-$src; fi
    if [ -n "$self_cache" ] && [ -f "$self_cache/.complete" ]; then
        cp "$self_cache"/simmesh-*.whl "$WHEELS"/
        log "simmesh's wheel: cached ($self_cache)"
    else
        # from a copy of the source files only: built in the checkout, setuptools would pack
        # whatever an earlier build left in build/lib (a module compiled then, not now, broke
        # an image that way)
        local tree; tree=$(mktemp -d)
        source_files | (cd "$ROOT" && tar -cf - -T -) | tar -xf - -C "$tree" ||
            { rm -rf "$tree"; die "copying the source tree failed"; }
        "$PYTHON" -m pip wheel -q --no-deps --disable-pip-version-check -w "$WHEELS" "$tree" \
            >"$IMAGE_CACHE/pip-wheel.log" 2>&1 || { rm -rf "$tree"; cat "$IMAGE_CACHE/pip-wheel.log" >&2; die "pip wheel failed"; }
        rm -rf "$tree"
        if [ -n "$self_cache" ]; then
            rm -rf "$IMAGE_CACHE"/self-* && mkdir -p "$self_cache"
            cp "$WHEELS"/simmesh-*.whl "$self_cache"/ && touch "$self_cache/.complete"
        fi
    fi
    local self; self=$(ls "$WHEELS"/simmesh-*.whl)
    if [ ! -f "$deps/.complete" ]; then
        rm -rf "$deps" && mkdir -p "$deps"
        log "downloading the runtime wheels for cp311 manylinux (pip download)"
        # by requirement, not through simmesh's own wheel: compiled by mypyc, that one is
        # tagged linux_x86_64, which pip download refuses for the manylinux platforms
        requirements "$ROOT/pyproject.toml" "${EXTRAS[@]}" >"$deps.requirements"
        "$PYTHON" -m pip download -q --disable-pip-version-check "${PIP_TARGET[@]}" -d "$deps" \
            -r "$deps.requirements" pip >"$deps.log" 2>&1 || { cat "$deps.log" >&2; die "pip download failed"; }
        touch "$deps/.complete"
    fi
    cp "$deps"/*.whl "$WHEELS"/
    log "$(ls "$WHEELS" | wc -l) wheels in build/wheels ($(du -sh "$WHEELS" | cut -f1))"
}

base_image() {
    local reason
    if ! reason=$(offline_reason); then echo "$PUBLIC_BASE_IMAGE"; return; fi
    local tar tag
    tar=$(bash "$ROOT/tools/kind/rootfs.sh" python)
    tag=simmesh.local/python:3.11-$DEBIAN_SUITE-$(basename "$tar" .tar | sed 's/.*-//')
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        log "offline ($reason): importing the debootstrap python3 rootfs as $tag"
        docker import --change 'CMD ["python3"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            "$tar" "$tag" >/dev/null
    fi
    echo "$tag"
}

main() {
    mkdir -p "$IMAGE_CACHE"
    bash "$ROOT/tools/kind/docker.sh" up
    step "wheels" wheels
    local base; base=$(base_image)
    log "docker build --target $TARGET -t $IMAGE (base $base)"
    local t; t=$(date +%s)
    DOCKER_BUILDKIT=0 docker build -q --force-rm --build-arg "BASE_IMAGE=$base" --target "$TARGET" \
        -t "$IMAGE" "$ROOT" >/dev/null
    # the image this one replaced, if nothing uses it
    docker image prune -f --filter "label=org.opencontainers.image.title=simmesh${TARGET/runtime/}" >/dev/null
    log "built $IMAGE in $(($(date +%s) - t))s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
    echo "$IMAGE"
}

main
