# simmesh: the controller, the node proxy and the test app in one slim, non-root image.
# Extras: tracing (the proxy's spans) and gate (simpy and numpy: the controller's admission
# gate simulates changes; no matplotlib, no Dask: the gate draws no plots; numpy's own tests
# are left out).
#
# A second target, `sim` (--target sim; `make image-sim`, simmesh/simmesh-sim:dev), adds the
# `sim` extra (matplotlib, dask.distributed): the Dask scheduler and workers that run sweeps
# on a cluster (deploy/dask). The default target is `runtime`.
#
# Build it with `make image` (tools/kind/image.sh): the Python packages come as wheels that
# the host prepares in build/wheels (pip wheel/download), so this build needs no network. The
# base is the public Python slim image, or, offline, a Debian python3 base built locally by
# debootstrap (--build-arg BASE_IMAGE=...); both have python3 3.11 and Debian bookworm.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY build/wheels /wheels
# pip runs from its own wheel: Debian's python3 has no pip, and the image needs none.
RUN python3 -m venv --without-pip /opt/simmesh \
    && pip_wheel=$(ls /wheels/pip-*.whl) \
    && /opt/simmesh/bin/python3 "$pip_wheel/pip" install --no-cache-dir --no-index \
        --find-links /wheels --disable-pip-version-check 'simmesh[tracing,gate]' \
    && find /opt/simmesh/lib -path '*/site-packages/numpy/*' -type d -name tests -prune \
        -exec rm -rf {} + \
    && /opt/simmesh/bin/simmesh --version

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="simmesh" \
      org.opencontainers.image.description="sidecar-free, simulation-first service mesh: controller, node proxy, test app" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/simmesh /opt/simmesh
# nft, for `simmesh capture` (the chart's GAMMA capture agents). The offline base (the python
# rootfs of tools/kind/rootfs.sh) has it already; the public slim image gets it from Debian.
RUN command -v nft >/dev/null || { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables \
        && rm -rf /var/lib/apt/lists/*; }
ENV PATH=/opt/simmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# the chart runs every pod as 65532:65532 with a read-only root filesystem
USER 65532:65532
ENTRYPOINT ["simmesh"]
CMD ["--help"]

# ---- the sweep workers' image: the runtime plus the `sim` extra (after `runtime`, so that a
# build of the default target never builds it)
FROM build AS build-sim
RUN pip_wheel=$(ls /wheels/pip-*.whl) \
    && /opt/simmesh/bin/python3 "$pip_wheel/pip" install --no-cache-dir --no-index \
        --find-links /wheels --disable-pip-version-check 'simmesh[tracing,gate,sim]' \
    && find /opt/simmesh/lib -path '*/site-packages/numpy/*' -type d -name tests -prune \
        -exec rm -rf {} + \
    && /opt/simmesh/bin/dask --version && /opt/simmesh/bin/simmesh --version

# its own base layer, not FROM runtime: a copy of /opt/simmesh over the runtime's would ship
# both (620 MB instead of about 470)
FROM ${BASE_IMAGE} AS sim
LABEL org.opencontainers.image.title="simmesh-sim" \
      org.opencontainers.image.description="simmesh with its simulator's sweep engine: Dask scheduler and workers for simmesh sim --sweep --scheduler"
COPY --from=build-sim /opt/simmesh /opt/simmesh
ENV PATH=/opt/simmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["simmesh"]
CMD ["--help"]
