# labs-api (and labs-gen) in a container. docs/deploy.md walks through it; in short:
#
#   docker build -t ai-labs .                                   # CPU image on python:3.11-slim-bookworm
#   docker run --rm -p 8000:8000 --stop-timeout 40 ai-labs      # http://localhost:8000/
#   docker run --rm ai-labs labs-gen --prompt "Hi" --temperature 0
#   docker build -t ai-labs:cuda --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 \
#                --build-arg EXTRAS="--extra quantization" .    # CUDA image (not built on the project's machines)
#
# Stopping: labs-api drains in-flight requests for LABS_SHUTDOWN_TIMEOUT seconds (30) after SIGTERM,
# then stops the engines. `docker stop` waits only 10 s by default before SIGKILL, so run with
# `--stop-timeout 40` (or `docker stop -t 40`); compose.yaml sets stop_grace_period: 40s and the
# Kubernetes Deployment terminationGracePeriodSeconds: 45. tini is PID 1 and passes SIGTERM on;
# a drained stop exits 0.
#
# The native C++ kernels are NOT built here: they are compiled with -march=native and cached under a
# key that hashes the CPU's flags (labs/engine/native), so a build made on the image builder's CPU
# would be ignored on any other processor. The image carries g++ and the Python headers instead, and
# the first start builds them in the background into $LABS_CACHE_DIR/native (the /data volume),
# serving with the PyTorch path meanwhile; later starts on the same kind of CPU load them at once.

# Any base with Python 3.11+ as `python3` (or apt to install it): python:3.11-slim-bookworm for CPU,
# nvidia/cuda:*-runtime-ubuntu24.04 for CUDA (its Python 3.12 comes from apt below).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# checkov:skip=CKV_DOCKER_7: the tag comes from BASE_IMAGE above (python:3.11-slim-bookworm), which checkov does not resolve
FROM ${BASE_IMAGE} AS base
ARG LABS_UID=1000
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1
# g++ and Python.h: the native kernels are compiled on first start (see above). python3-dev only where
# the base's interpreter lacks its headers (Debian's python3, Ubuntu); the official python images have
# them under /usr/local. tini: PID 1 that forwards signals and reaps the kernel build's processes.
RUN set -eux; \
    apt-get update; \
    packages="ca-certificates g++ tini"; \
    command -v python3 >/dev/null || packages="$packages python3"; \
    python3 -c 'import ensurepip' 2>/dev/null || packages="$packages python3-venv"; \
    python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null \
        || packages="$packages python3-dev"; \
    apt-get install -y --no-install-recommends $packages; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -c 'import ensurepip, os, sys, sysconfig; assert sys.version_info >= (3, 11), sys.version; \
                assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")'
# A non-root user with a fixed uid (1000: the usual owner of a bind-mounted ~/.cache/huggingface).
# Ubuntu images ship a user "ubuntu" with uid 1000: it gives its uid up.
RUN set -eux; \
    other="$(getent passwd "$LABS_UID" | cut -d: -f1 || true)"; \
    if [ -n "$other" ]; then userdel --remove "$other" 2>/dev/null || userdel "$other"; fi; \
    groupadd --gid "$LABS_UID" labs 2>/dev/null || groupadd labs; \
    useradd --uid "$LABS_UID" --gid labs --create-home --home-dir /home/labs --shell /usr/sbin/nologin labs

FROM base AS build
ARG UV_VERSION=0.13.9
# Empty: torch exactly as uv.lock pins it (PyPI's Linux wheel, which pulls ~4 GB of CUDA libraries and triton).
# A PyTorch CPU wheel index (https://download.pytorch.org/whl/cpu) installs the same torch version's
# CPU build instead and leaves the CUDA packages out: a much smaller CPU image.
ARG TORCH_INDEX=""
# Extra uv flags, e.g. "--extra quantization" (bitsandbytes) for the CUDA image.
ARG EXTRAS=""
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1
# Behind a TLS-inspecting proxy, put its CA certificates (*.crt) in deploy/docker/certs/: they are
# trusted by this build stage only and never reach the runtime image.
COPY deploy/docker/certs/ /usr/local/share/ca-certificates/labs-build/
RUN if ls /usr/local/share/ca-certificates/labs-build/*.crt >/dev/null 2>&1; then update-ca-certificates; fi
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=1
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY deploy/docker/uv-sync.sh /usr/local/bin/labs-uv-sync
# The dependencies first (a layer that survives changes to labs' own code), then labs itself, as a
# regular (non-editable) install: the runtime stage needs /app/.venv only.
RUN labs-uv-sync --no-install-project
COPY labs ./labs
RUN labs-uv-sync --no-editable

FROM base AS runtime
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
# labs.toml (every key commented out: the defaults) and the sample transactions, read from the working folder.
COPY labs.toml ./
COPY data ./data
# LABS_HOME (conversations, stored responses, the local document index) and LABS_CACHE_DIR (the GGUF
# converted to safetensors, the native kernels) on one volume; the Hugging Face cache where the original
# docs mount it (-v $HOME/.cache/huggingface:/root/.cache/huggingface), /root made traversable for it.
ENV PATH=/app/.venv/bin:$PATH \
    LABS_HOST=0.0.0.0 \
    LABS_PORT=8000 \
    LABS_HOME=/data \
    LABS_CACHE_DIR=/data/cache \
    HF_HOME=/root/.cache/huggingface
RUN set -eux; \
    mkdir -p /data/cache "$HF_HOME"; \
    chown labs:labs /data /data/cache "$HF_HOME"; \
    chmod 0711 /root; \
    labs-gen --help >/dev/null
VOLUME ["/data", "/root/.cache/huggingface"]
USER labs
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness: /health answers at once (the model loads on first use, or before traffic with
# LABS_PRELOAD_ON_START=true; /ready says when it is in memory). No curl in the image: Python asks.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LABS_PORT', '8000'), timeout=4)"]
# uvicorn ends a graceful shutdown by re-raising SIGTERM, so labs-api's status after a drain is 143;
# tini -e 143 reports that as 0: `docker stop` within the timeout exits 0, a SIGKILL still shows 137.
ENTRYPOINT ["tini", "-e", "143", "--"]
CMD ["labs-api"]
