# model-provisioner container image.
#
#   podman build -t model-provisioner:dev .                 # with the embedding smoke test (CPU torch)
#   podman build -t model-provisioner:slim --build-arg EMBED=0 .   # checksums only, no torch
#
# PYTHON_IMAGE picks the base (any Debian-like image with python3.11 + venv as `python`); where no registry
# is reachable, scripts/podman-image.sh builds on a debootstrap-made one (scripts/podman-base.sh).
# Behind a TLS-intercepting proxy, give pip the CA bundle as a build secret (never an ENV of the image):
#   podman build --secret id=host-ca,src=/etc/ssl/certs/ca-certificates.crt ...
#
# The image runs as UID/GID 10001, writes only to /tmp and the model volume, and so works with
# readOnlyRootFilesystem: true (mount an emptyDir at /tmp; the Helm chart does).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# 1: install torch (CPU wheel) + sentence-transformers for verify=full; 0: checksums-only image.
ARG EMBED=1
ARG TORCH_VERSION=2.13.0
ARG TORCH_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional package index (a mirror); only this stage sees it, so it never reaches the final image.
ARG PIP_INDEX_URL=https://pypi.org/simple
# Optional local wheel directories pip also looks in (space-separated; e.g. a CPU torch wheel that
# scripts/podman-image.sh mounts with `podman build -v`); build stage only, like the index.
ARG PIP_FIND_LINKS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, in its own layer: it is by far the largest and changes least often.
# The optional `host-ca` secret is the CA bundle pip must trust (mounted only while this step runs).
RUN --mount=type=secret,id=host-ca \
    if [ -s /run/secrets/host-ca ]; then export PIP_CERT=/run/secrets/host-ca; fi \
    && python -m venv /opt/venv \
    && if [ "$EMBED" = "1" ]; then \
        pip install --no-cache-dir --index-url "${PIP_INDEX_URL}" "torch==${TORCH_VERSION}" \
            --extra-index-url "${TORCH_EXTRA_INDEX_URL}"; \
    fi

WORKDIR /src
COPY pyproject.toml README.md ./
COPY provisioner ./provisioner
# Then the package.
RUN --mount=type=secret,id=host-ca \
    if [ -s /run/secrets/host-ca ]; then export PIP_CERT=/run/secrets/host-ca; fi \
    && if [ "$EMBED" = "1" ]; then extra="[embed]"; else extra=""; fi \
    && pip install --no-cache-dir --index-url "${PIP_INDEX_URL}" "./${extra}" \
    && model-provisioner --help > /dev/null

# Trim what the runtime never runs, in its own step (only /opt/venv reaches the final image, so
# this layer's size does not matter and changing the trim reuses the install layers): pip and
# setuptools (it installs nothing), the packages' own test suites, the kubernetes asyncio client
# (kubernetes/aio, ~70 MB; the kube package uses the sync client only) and aiohttp with its
# dependencies (only that client needs them). EMBED=1 also drops, from the CPU torch wheel, the C++
# headers (62 MB, for building extensions), the C++ test binaries and protoc in torch/bin (50 MB;
# torch_shm_manager stays) and the test libraries in torch/lib; networkx (torch.compile's partitioner
# only); numpy's headers; and the bytecode of transformers' ~560 model folders (52 MB: the one model
# family a smoke test loads compiles in milliseconds). sympy, scipy, scikit-learn and
# torch.testing._internal stay: the smoke test imports them (python -X importtime; docs/benchmarks.md).
RUN pip uninstall --yes pip setuptools \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && rm -rf /opt/venv/bin/pip* /opt/venv/share "$site/kubernetes/aio" \
    && find "$site" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} + \
    && rm -rf "$site"/aiohttp* "$site"/aiohappyeyeballs* "$site"/aiosignal* "$site"/frozenlist* \
        "$site"/multidict* "$site"/propcache* "$site"/yarl* \
    && if [ -d "$site/torch" ]; then \
        rm -rf "$site/torch/include" "$site/torch/bin"/protoc* "$site/torch/bin"/*Test "$site/torch/bin"/test_* \
            "$site/torch/lib"/lib*_test.so "$site/torch/lib/libbackend_with_compiler.so" \
            "$site/torch/lib/libaoti_custom_ops.so" "$site"/networkx "$site"/networkx-*.dist-info \
            "$site/numpy/_core/include" "$site"/transformers/models/*/__pycache__ \
        && python -c 'import torch, sentence_transformers; assert torch.__version__.endswith("+cpu")'; \
    fi \
    && python -c 'from kubernetes import client, config; import provisioner.kube, provisioner.cli'

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG EMBED=1
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="model-provisioner" \
      org.opencontainers.image.description="Init container / sidecar that makes a Hugging Face model ready on a shared volume: plan, resumable fetch, verify, ready marker, metrics." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      io.model-provisioner.embed="${EMBED}"

RUN groupadd --system --gid 10001 provisioner \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin provisioner \
    && mkdir -p /models \
    && chown 10001:10001 /models

COPY --from=build /opt/venv /opt/venv

# Everything writable lives under /tmp (an emptyDir in Kubernetes) or the model volume.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PROVISIONER_TARGET=/models

USER 10001:10001
WORKDIR /tmp
EXPOSE 9733

ENTRYPOINT ["model-provisioner"]
CMD ["run"]
