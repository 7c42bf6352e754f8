# ddpm-serve: the inference server with the embedded model (docs/deployment.md).
#
#   docker build -t ddpm-serve:cpu .                          CPU image (the default)
#   docker build --build-arg VARIANT=cuda -t ddpm-serve:cuda . CUDA image; run with --gpus
#
# VARIANT picks one of the two base stages below; each brings its own Python 3.12 and the
# address of the torch wheels that match it. TORCH_CUDA (the wheel's CUDA, e.g. cu128) and
# CUDA_IMAGE (the runtime base) must name the same CUDA release: change them together.
# EXTRAS=train adds the trainer's dependencies, for `torchrun -m cli train` in this image.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- base stages: Python and the torch index, one per variant ----

FROM ${PYTHON_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${CUDA_IMAGE} AS base-cuda
ARG TORCH_CUDA=cu128
# Ubuntu 24.04's own Python 3.12. The torch wheel brings its CUDA libraries (cuBLAS, cuDNN);
# the base brings the runtime and the NVIDIA_* variables the container toolkit reads.
# The versions follow the base image's tag: pinning apt versions breaks when the archive moves.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}

# base-cpu or base-cuda: a stage of this file, which hadolint takes for an untagged image.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# ---- builder: a virtual environment with torch, the dependencies, then the project ----

FROM base AS builder
ARG TORCH_VERSION=2.13.0
ARG EXTRAS=""
RUN python3 -m venv /opt/venv
WORKDIR /src

# torch first and on its own, from the index that matches the base: the project's torch range
# is then satisfied, so nothing later can pull a different build. This layer only changes
# with TORCH_VERSION or the variant.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The other dependencies, from pyproject.toml alone: editing the source keeps this layer.
COPY pyproject.toml ./
COPY docker/requirements.py docker/
RUN python docker/requirements.py pyproject.toml "${EXTRAS}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# The source, including the embedded model (model/embedded/*.safetensors, package data): the
# whole build context, which .dockerignore reduces to the packages, cli.py and the readme.
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -I -c "from model.pipeline import EMBEDDED_CHECKPOINT as p; \
assert p.is_file(), f'{p} is missing: the image must embed the model'; print('embedded model:', p)"

# ---- runtime: the environment alone, run by an unprivileged user ----

FROM base AS runtime
ARG UID=10001
RUN useradd --create-home --home-dir /home/ddpm --shell /usr/sbin/nologin --uid "${UID}" --user-group ddpm
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/ddpm
# Inside the container the server listens on every interface, on a fixed port that the
# health check, nginx and Prometheus rely on; every other setting comes from DDPM_* variables.
ENV DDPM_HOST=0.0.0.0 \
    DDPM_PORT=8000
USER ${UID}:${UID}
EXPOSE 8000
# Ready, not just alive: 503 while the model loads and while draining, so an orchestrator waits.
# Python, because slim images have no curl; urlopen raises on any status other than 2xx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DDPM_PORT', '8000'), timeout=4)"]
# SIGTERM starts the server's drain: /readyz turns 503 and admitted requests finish.
STOPSIGNAL SIGTERM
CMD ["ddpm", "serve"]
