#!/usr/bin/env bash
# Builds (once) the tiny Llama model and its two LoRA adapters that the real-engine tests serve,
# and prints the directory that holds them:
#   <dir>/model                      base model (safetensors, byte-level BPE tokenizer, chat template)
#   <dir>/adapters/tiny_synth_v1     LoRA r=8 on q_proj/v_proj
#   <dir>/adapters/tiny_rerank_v1    LoRA r=16 on q_proj/v_proj
# The assets live outside the repository, keyed by TINY_MODEL_VERSION: bump it whenever
# tests/engine/build_tiny_model.py changes what it writes.
set -euo pipefail

TINY_MODEL_VERSION="v1"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
CACHE_ROOT="${GPU_ORCH_CACHE:-$HOME/.cache/gpu-orchestrator}"
MODEL_DIR="$CACHE_ROOT/tiny-model-$TINY_MODEL_VERSION"

if [ -f "$MODEL_DIR/.complete" ]; then
  echo "$MODEL_DIR"
  exit 0
fi

ENGINE_ENV="$("$SCRIPT_DIR/engine-env.sh")"
mkdir -p "$CACHE_ROOT"
# Two test runs starting together must not build into the same place: the second waits, then
# finds the marker.
exec 9>"$CACHE_ROOT/.tiny-model-$TINY_MODEL_VERSION.lock"
flock 9
if [ -f "$MODEL_DIR/.complete" ]; then
  echo "$MODEL_DIR"
  exit 0
fi
# Build beside the target and rename it into place, so an interrupted build never leaves a
# half-written directory under the final name; the marker is still written last.
BUILD_DIR="$(mktemp -d "$CACHE_ROOT/.tiny-model-$TINY_MODEL_VERSION.XXXXXX")"
trap 'rm -rf "$BUILD_DIR"' EXIT
chmod 755 "$BUILD_DIR"
HF_HUB_OFFLINE=1 "$ENGINE_ENV/bin/python" "$REPO_ROOT/tests/engine/build_tiny_model.py" \
  "$BUILD_DIR" >&2
rm -rf "$MODEL_DIR"
mv "$BUILD_DIR" "$MODEL_DIR"
trap - EXIT
touch "$MODEL_DIR/.complete"
echo "$MODEL_DIR"
