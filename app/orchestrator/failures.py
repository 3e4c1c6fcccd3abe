"""Why an engine run ended badly: the one list of failure kinds and the one table of remedies.

No project imports: the log classifier, the lifecycle and the API all name failures from here.
"""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    GPU_OOM = "gpu_oom"
    KV_CACHE_INSUFFICIENT = "kv_cache_insufficient"
    HOST_OOM = "host_oom"
    EXIT = "exit"
    START_TIMEOUT = "start_timeout"
    UNHEALTHY = "unhealthy"
    LAUNCH_ERROR = "launch_error"
    STOP_FAILED = "stop_failed"
    INSUFFICIENT_GPU_MEMORY = "insufficient_gpu_memory"
    GPU_UNAVAILABLE = "gpu_unavailable"
    GPU_MEMORY_LOW = "gpu_memory_low"
    PORT_UNAVAILABLE = "port_unavailable"
    ADAPTER_INVALID = "adapter_invalid"


OOM_KINDS = frozenset(
    {FailureKind.GPU_OOM, FailureKind.KV_CACHE_INSUFFICIENT, FailureKind.HOST_OOM}
)
# A restart of the same spec cannot fix these: the engine would fail the same way.
DETERMINISTIC_KINDS = frozenset({FailureKind.KV_CACHE_INSUFFICIENT, FailureKind.ADAPTER_INVALID})

REMEDIES: dict[FailureKind, str] = {
    FailureKind.KV_CACHE_INSUFFICIENT: (
        "The KV cache cannot hold one request of max_model_len tokens, or cannot be allocated at "
        "the size asked for; restarting with the same settings fails the same way. Raise "
        "gpu_memory_util or lower max_model_len, or size the KV cache yourself with "
        "--kv-cache-memory-bytes in extra_args. On vLLM's CPU backend the KV cache is "
        "--kv-cache-memory-bytes or env VLLM_CPU_KVCACHE_SPACE (GiB; it overrides the flag): "
        "raise it when one request does not fit, lower it when the node has less memory "
        "available than it asks for."
    ),
    FailureKind.GPU_OOM: (
        "The GPU ran out of memory. Lower gpu_memory_util, max_num_seqs or max_model_len, or "
        "move the model to a GPU with more free memory; if other processes hold GPU memory, free "
        "it first. If it fails during CUDA graph capture, --enforce-eager avoids the graphs."
    ),
    FailureKind.HOST_OOM: (
        "The host ran out of RAM and the process was killed (kernel OOM killer, cgroup "
        "MemoryMax= or Ray's memory monitor). Raise memory_max, stop other memory-hungry "
        "processes, or lower the engine's host memory use (fewer engines per node, smaller "
        "swap_space / cpu_offload_gb)."
    ),
    FailureKind.ADAPTER_INVALID: (
        "An adapter of the spec cannot be served as it is: fix or remove it in adapter_paths, "
        "then start again."
    ),
    FailureKind.STOP_FAILED: (
        "Processes of the engine survived SIGKILL (usually stuck in the kernel on a device): "
        "check the GPU driver (nvidia-smi) and the pids named; the orchestrator tries again at "
        "the next stop, delete or start."
    ),
}


def remedy(kind: FailureKind) -> str | None:
    return REMEDIES.get(kind)


def failure_message(kind: FailureKind, detail: str) -> str:
    """The detail an operator reads, with what to do about it when there is a known remedy."""
    text = REMEDIES.get(kind)
    return f"{detail} ({text})" if text else detail
