#!/usr/bin/env bash
# Usage: scripts/bench-env.sh litellm|vllm-router [--check]
#
# Builds (once) the virtual environment of a proxy that the gateway benchmark compares against,
# and prints its path. Each tool gets its own venv outside the repository, keyed by the version it
# pins, so the service's own venv never depends on either. With --check nothing is built: the path
# is printed when the venv is complete, else the script exits 1 (the quick benchmark uses this).
set -euo pipefail

TOOL="${1:-}"
MODE="${2:-build}"
# 1.108.7 is the newest LiteLLM whose `proxy` extra installs here: later ones pin companions that
# pip cannot find on PyPI (1.108.8: litellm-enterprise==0.1.79.post2; 1.110.2: litellm-proxy).
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
# vllm-router's wheel carries its Rust router (vllm_router_rs.abi3.so); `vllm-router` launches it.
VLLM_ROUTER_VERSION="${VLLM_ROUTER_VERSION:-0.1.17}"
CACHE_ROOT="${GPU_ORCH_CACHE:-$HOME/.cache/gpu-orchestrator}"
PYTHON="${PYTHON:-python3.11}"

case "$TOOL" in
  litellm)
    VERSION="$LITELLM_VERSION"
    REQUIREMENT="litellm[proxy]==$LITELLM_VERSION"
    PROBE="import litellm.proxy.proxy_server"
    ;;
  vllm-router)
    VERSION="$VLLM_ROUTER_VERSION"
    REQUIREMENT="vllm-router==$VLLM_ROUTER_VERSION"
    PROBE="from vllm_router.router import Router"
    ;;
  *)
    echo "usage: $0 litellm|vllm-router [--check]" >&2
    exit 2
    ;;
esac
ENV_DIR="$CACHE_ROOT/bench-$TOOL-$VERSION"

if [ -x "$ENV_DIR/bin/python" ] && [ -f "$ENV_DIR/.complete" ]; then
  echo "$ENV_DIR"
  exit 0
fi
if [ "$MODE" = "--check" ]; then
  echo "not built: $ENV_DIR (run: bash scripts/bench-env.sh $TOOL)" >&2
  exit 1
fi

mkdir -p "$CACHE_ROOT"
# The marker file is written last, so an interrupted build is never mistaken for a complete one
# (a venv cannot be renamed: its scripts carry their absolute path).
rm -rf "$ENV_DIR"
{
  "$PYTHON" -m venv "$ENV_DIR"
  "$ENV_DIR/bin/pip" install --quiet --upgrade pip
  "$ENV_DIR/bin/pip" install --quiet "$REQUIREMENT"
  "$ENV_DIR/bin/python" -c "$PROBE"
} >&2
touch "$ENV_DIR/.complete"
echo "$ENV_DIR"
