#!/usr/bin/env bash
# Usage: scripts/gpu-sleep-check.sh [--swaps N] [--model-a M] [--model-b M] [--dtype D] ...
#        (every option of scripts/gpu_sleep_check.py; --help lists them)
#
# Real vLLM sleep-mode swaps on a node with one NVIDIA GPU: starts the orchestrator on NVML,
# registers two models with sleep_level 1 that do not fit on the GPU together, swaps them
# through the gateway and prints per swap the wall time, NVML free memory before, after the
# sleep and after the wake, and the state transitions of both models.
#
# Environment: VLLM_PYTHON, the interpreter of a CUDA build of vLLM (default: python3);
# ORCH_PYTHON, the orchestrator's (default: this repository's .venv/bin/python).
# Exit status: 0 every swap good; 1 a swap failed or a wake did not take its memory back;
# 2 the check cannot run here (no GPU, no CUDA vLLM, no orchestrator venv).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
VLLM_PYTHON="${VLLM_PYTHON:-python3}"
ORCH_PYTHON="${ORCH_PYTHON:-$REPO_ROOT/.venv/bin/python}"

cannot_run() {
  echo "gpu-sleep-check: cannot run: $*" >&2
  exit 2
}

command -v nvidia-smi >/dev/null 2>&1 ||
  cannot_run "nvidia-smi not found; this check needs a node with an NVIDIA GPU and its driver"
if ! gpus="$(nvidia-smi --query-gpu=index,name,memory.total,memory.free \
  --format=csv,noheader,nounits 2>&1)"; then
  cannot_run "nvidia-smi could not read the GPUs: $gpus"
fi
gpu_count="$(grep -c . <<<"$gpus" || true)"
[ "$gpu_count" -ge 1 ] || cannot_run "nvidia-smi lists no GPU"
# NVML sees every GPU of the node whatever CUDA_VISIBLE_DEVICES says: with two GPUs the models
# would each get one and never swap.
[ "$gpu_count" -eq 1 ] || cannot_run "NVML sees $gpu_count GPUs; run where one is visible \
(a container started with --gpus device=0)"
echo "GPU: $gpus (index, name, total MiB, free MiB)"

command -v "$VLLM_PYTHON" >/dev/null 2>&1 ||
  cannot_run "VLLM_PYTHON=$VLLM_PYTHON not found; set it to the Python of a CUDA vLLM"
if ! vllm_probe="$("$VLLM_PYTHON" - 2>&1 <<'PY'
import torch
import vllm
from vllm.platforms import current_platform

assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
assert current_platform.is_sleep_mode_available(), (
    f"vLLM {vllm.__version__} on {current_platform.device_name!r} has no sleep mode (a CPU build?)"
)
print(f"vLLM {vllm.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
)"; then
  cannot_run "no CUDA vLLM under $VLLM_PYTHON: $(tail -n 1 <<<"$vllm_probe")"
fi
echo "$vllm_probe"

[ -x "$ORCH_PYTHON" ] ||
  cannot_run "no $ORCH_PYTHON; build the venv (make venv) or set ORCH_PYTHON"
(cd "$REPO_ROOT" && "$ORCH_PYTHON" -c "import app.cli, httpx, pynvml") ||
  cannot_run "$ORCH_PYTHON cannot import the orchestrator"

cd "$REPO_ROOT"
exec "$ORCH_PYTHON" "$SCRIPT_DIR/gpu_sleep_check.py" --vllm-python "$(command -v "$VLLM_PYTHON")" "$@"
