"""The messages that mean an engine ran out of memory, each with the code that prints it.

Data only: app/orchestrator/oom.py normalises a line (colour codes, container and logger prefixes,
terminal wraps) and applies these rules. A rule matches the message text that the named project
formats, not the lines around it in any one report, so it holds for logs it was not built from;
tests/fixtures/oom/README.md measures that on a held-out set.

Words inside a phrase may be separated by any whitespace or none: a message wrapped by a terminal
is judged with its two lines joined, and the wrap may fall between two words or inside one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.orchestrator.failures import FailureKind


@dataclass(frozen=True)
class Rule:
    kind: FailureKind
    pattern: re.Pattern[str]
    source: str  # the project and code (or documented message) the pattern matches
    # Literals (lowercase, whitespace removed) one of which every match contains: a substring
    # test on the squashed line rules most patterns out before their regex runs.
    anchors: tuple[str, ...]


def phrase(text: str) -> str:
    """A regex for `text` (itself a regex) whose spaces match any whitespace, or none."""
    return text.replace(" ", r"\s*")


def _rule(
    kind: FailureKind,
    pattern: str,
    source: str,
    *,
    anchors: tuple[str, ...],
    ignore_case: bool = False,
    wrappable: bool = True,
) -> Rule:
    """wrappable=False keeps spaces literal: a lookbehind must have a fixed width."""
    text = phrase(pattern) if wrappable else pattern
    flags = re.IGNORECASE if ignore_case else 0
    return Rule(kind, re.compile(text, flags), source, anchors)


_KV = FailureKind.KV_CACHE_INSUFFICIENT
_GPU = FailureKind.GPU_OOM
_HOST = FailureKind.HOST_OOM

# Checked in this order; the first kind with a matching rule wins. The KV cache messages are the
# most specific (they name the fix), and a GPU OOM that travels inside a Ray or Python wrapper is
# still a GPU OOM.
RULES: tuple[Rule, ...] = (
    # -- the KV cache cannot hold one request: no restart fixes it -------------------------
    _rule(
        _KV,
        r"No available memory for the cache blocks",
        "vLLM v1 vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory (available <= 0); "
        "v0 vllm/worker/worker.py and cpu_worker.py raise_if_cache_size_invalid",
        anchors=("cacheblocks",),
    ),
    _rule(
        _KV,
        r"KV cache is needed, which is larger than the available KV cache memory",
        "vLLM v1 vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory",
        ignore_case=True,
        anchors=("cacheisneeded",),
    ),
    _rule(
        _KV,
        r"max seq len \(\d+\) is larger than the maximum number of tokens that can be stored "
        r"in KV cache",
        "vLLM v0 vllm/worker/worker.py and cpu_worker.py raise_if_cache_size_invalid",
        anchors=("storedinkvcache",),
    ),
    _rule(
        _KV,
        r"on kv cache allocation is less than requested memory for kv",
        "vLLM CPU backend vllm/v1/worker/cpu_worker.py determine_available_memory "
        "(--kv-cache-memory-bytes / VLLM_CPU_KVCACHE_SPACE above free RAM, or a budget <= 0)",
        ignore_case=True,
        anchors=("kvcacheallocation",),
    ),
    _rule(
        _KV,
        r"Available KV cache memory: -\d",
        "vLLM v1 vllm/v1/worker/gpu_worker.py determine_available_memory logs the budget; a "
        "negative one is a KV cache that cannot exist",
        anchors=("kvcachememory:-",),
    ),
    _rule(
        _KV,
        r"reserved for KV Cache is -\d",
        "vLLM v0 vllm/worker/worker.py determine_num_available_blocks (the profiling summary)",
        ignore_case=True,
        anchors=("kvcacheis-",),
    ),
    _rule(
        _KV,
        r"# (?:GPU|cuda|xpu|hpu|npu|tpu) blocks: 0(?!\d)",
        "vLLM v0 vllm/executor/executor_base.py initialize_cache: no device block fits",
        ignore_case=True,
        anchors=("blocks:0",),
    ),
    _rule(
        _KV,
        r"Maximum concurrency for [\d,]+ tokens per request: 0\.00x",
        "vLLM v0 executor_base.py initialize_cache: not one request of max_model_len fits",
        anchors=("0.00x",),
    ),
    # -- the GPU allocator failed -----------------------------------------------------------
    _rule(
        _GPU,
        r"(?:CUDA|HIP|XPU|NPU|MPS backend) out of memory",
        "PyTorch c10/cuda/CUDACachingAllocator.cpp (torch.OutOfMemoryError 'CUDA out of memory. "
        "Tried to allocate'), its ROCm (HIP) build, c10/xpu/XPUCachingAllocator.cpp, "
        "aten/src/ATen/mps/MPSAllocator.mm, torch_npu; vLLM gpu_model_runner.py 'CUDA out of "
        "memory occurred when warming up sampler/pooler'",
        anchors=("outofmemory",),
    ),
    _rule(
        _GPU,
        r"(?:CUDA|HIP)(?: driver)? error: out of memory",
        "PyTorch C10_CUDA_CHECK / C10_CUDA_DRIVER_CHECK (c10/cuda/CUDAException.h, "
        "driver_api.h) with cudaErrorMemoryAllocation's text, e.g. from CUDA graph capture; "
        "vLLM csrc/cumem_allocator.cpp CUDA_CHECK ('CUDA Error: out of memory at ...')",
        anchors=("error:outofmemory",),
        ignore_case=True,
    ),
    _rule(
        _GPU,
        r"Triton Error \[(?:CUDA|HIP)\]: out of memory",
        "Triton third_party/nvidia/backend/driver.c ('Triton Error [CUDA]: %s' with "
        "cuGetErrorString), when a kernel's launch or load finds no device memory",
        anchors=("]:outofmemory",),
    ),
    _rule(
        _GPU,
        r"RESOURCE_EXHAUSTED: (?:Error allocating device buffer|XLA:TPU compile permanent error"
        r"\. Ran out of memory)",
        "XLA / PJRT as vLLM's TPU backend prints them (device buffer allocation, HBM at compile)",
        anchors=("resource_exhausted:errorallocating", "ranoutofmemory"),
    ),
    _rule(
        _GPU,
        r"(?:cudaErrorMemoryAllocation|hipErrorOutOfMemory|CUDA_ERROR_OUT_OF_MEMORY"
        r"|UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY)",
        "the CUDA runtime/driver, HIP and Intel Unified Runtime error names, as PyTorch, Triton "
        "and FlashInfer print them",
        anchors=(
            "cudaerrormemoryallocation",
            "hiperroroutofmemory",
            "cuda_error_out_of_memory",
            "ur_result_error_out_of_device_memory",
        ),
    ),
    _rule(
        _GPU,
        r"CU(?:BLAS|DNN|SOLVER|SPARSE)_STATUS_ALLOC_FAILED",
        "cuBLAS/cuDNN/cuSOLVER/cuSPARSE handle or workspace allocation (PyTorch "
        "aten/src/ATen/cuda/CublasHandlePool.cpp, 'when calling cublasCreate(handle)')",
        anchors=("_status_alloc_failed",),
    ),
    _rule(
        _GPU,
        r"Cuda failure (?:\d+ )?'?out of memory",
        "NCCL src/include/checks.h CUDACHECK ('NCCL WARN Cuda failure 'out of memory'', newer "
        "'Cuda failure 2 'out of memory'')",
        anchors=("outofmemory",),
    ),
    _rule(
        _GPU,
        r"(?<!except )torch\.(?:cuda\.)?OutOfMemoryError(?=:|\s*$)",
        "PyTorch torch.OutOfMemoryError, raised only by device allocators; the message may be "
        "on the next line when a terminal wrapped it",
        wrappable=False,
        anchors=("outofmemoryerror",),
    ),
    _rule(
        _GPU,
        r"Free memory on device\b.*\bis less than desired GPU memory utilization",
        "vLLM v1 vllm/v1/worker/utils.py request_memory (refuses to start)",
        anchors=("freememoryondevice",),
    ),
    # -- the host ran out of RAM ------------------------------------------------------------
    _rule(
        _HOST,
        r"killed due to the node running low on memory",
        "Ray python/ray/exceptions.py OutOfMemoryError ('Task was killed ...', newer '1 "
        "worker(s) were killed ...')",
        anchors=("runninglowonmemory",),
    ),
    _rule(
        _HOST,
        r"ray\.exceptions\.OutOfMemoryError",
        "Ray python/ray/exceptions.py",
        anchors=("ray.exceptions.outofmemoryerror",),
    ),
    _rule(
        _HOST,
        r"killed due to memory pressure \(OOM\)",
        "Ray src/ray/raylet/node_manager.cc ('N Workers (tasks / actors) killed due to memory "
        "pressure (OOM)')",
        anchors=("memorypressure(oom)",),
    ),
    _rule(
        _HOST,
        r"which exceeds the memory usage threshold of",
        "Ray raylet memory monitor (node_manager.cc, the worker-killing message)",
        anchors=("memoryusagethreshold",),
    ),
    _rule(
        _HOST,
        r"Ray killed this worker",
        "Ray raylet memory monitor, same message",
        anchors=("raykilledthisworker",),
    ),
    _rule(
        _HOST,
        r"NODE_OUT_OF_MEMORY",
        "Ray WorkerExitType in exit details (common.proto)",
        anchors=("node_out_of_memory",),
    ),
    _rule(
        _HOST,
        r"ut of memory: Kill(?:ed)? process \d+",
        "Linux mm/oom_kill.c ('Out of memory: Killed process', 'Memory cgroup out of memory: "
        "Killed process'; 'Kill process' before 4.19)",
        anchors=("ofmemory:kill",),
    ),
    _rule(
        _HOST,
        r"oom-kill:",
        "Linux mm/oom_kill.c dump_oom_victim ('oom-kill:constraint=')",
        anchors=("oom-kill:",),
    ),
    _rule(_HOST, r"invoked oom-killer", "Linux mm/oom_kill.c dump_header", anchors=("oom-killer",)),
    _rule(
        _HOST,
        r"oom_reaper: reaped process \d+",
        "Linux mm/oom_kill.c oom_reap_task_mm",
        anchors=("oom_reaper",),
    ),
    _rule(
        _HOST,
        r"killed by the OOM killer",
        "systemd src/core/unit.c ('A process of this unit has been killed by the OOM killer.')",
        anchors=("theoomkiller",),
    ),
    _rule(
        _HOST,
        r"Failed with result 'oom-kill'",
        "systemd service result oom-kill (MemoryMax= hit)",
        anchors=("'oom-kill'",),
    ),
    _rule(
        _HOST,
        r"Killed \S+ due to memory (?:pressure|used)",
        "systemd-oomd src/oom/oomd-util.c",
        anchors=("duetomemory",),
    ),
    _rule(
        _HOST,
        r"OOMKilled(?!\"?: ?false)",
        'Docker State.OOMKilled (not `"OOMKilled": false`) and Kubernetes\' termination reason',
        anchors=("oomkilled",),
    ),
    _rule(
        _HOST,
        r"DefaultCPUAllocator: (?:not enough memory|can't allocate memory)",
        "PyTorch c10/core/impl/alloc_cpu.cpp alloc_cpu",
        anchors=("allocator:notenoughmemory", "allocator:can'tallocatememory"),
    ),
    _rule(
        _HOST,
        r"on startup is less than desired CPU memory utilization",
        "vLLM CPU backend vllm/v1/worker/cpu_worker.py (the host cannot give the requested share)",
        anchors=("desiredcpumemory",),
    ),
    _rule(
        _HOST,
        r"std::bad_alloc",
        "C++ operator new ('terminate called after throwing ...')",
        anchors=("std::bad_alloc",),
    ),
    _rule(
        _HOST,
        r"MemoryError(?<![\w.]MemoryError)(?<!except MemoryError)(?::|\s*$)",
        "Python's MemoryError as the exception line (not OutOfMemoryError, not an except clause)",
        wrappable=False,
        anchors=("memoryerror",),
    ),
    _rule(
        _HOST,
        r"Cannot allocate memory",
        "strerror(ENOMEM) from mmap, fork, pinned memory",
        anchors=("cannotallocatememory",),
    ),
    _rule(
        _HOST,
        r": line \d+: \d+ Killed\b",
        "bash jobs.c reporting a child killed by SIGKILL ('script: line 3: 1234 Killed')",
        anchors=("killed",),
    ),
)

# A line that is only "Killed" (after its prefixes): what a shell prints when the kernel's OOM
# killer sends SIGKILL to the command it ran. Judged on the line without prefixes.
BARE_KILLED = Rule(
    _HOST, re.compile(r"^\s*Killed\s*$"), "sh/bash job report of SIGKILL", anchors=("killed",)
)

# Substrings of the lowercased text that every rule needs one of: most lines are rejected by
# these few substring tests before any regex runs. Every anchor contains one of them.
PREFILTER_TOKENS = (
    "memory",
    "cache",
    "kill",
    "oom",
    "bad_alloc",
    "alloc_failed",
    "blocks:0",
    "0.00x",
    "resource_exhausted",
)


def _index_by_token() -> dict[str, tuple[tuple[str, Rule], ...]]:
    """Each (anchor, rule) under one prefilter token the anchor contains: a line can only hold
    the anchor if it holds that token, so only the anchors of the tokens present are tried."""
    index: dict[str, list[tuple[str, Rule]]] = {token: [] for token in PREFILTER_TOKENS}
    for rule in RULES:
        for anchor in rule.anchors:
            tokens = [token for token in PREFILTER_TOKENS if token in anchor]
            if not tokens:
                raise ValueError(f"anchor {anchor!r} holds no prefilter token")
            token = tokens[0]
            index[token].append((anchor, rule))
    return {token: tuple(entries) for token, entries in index.items()}


# Rules in RULES order within each token; oom.py restores the global order among candidates.
ANCHORED_BY_TOKEN = _index_by_token()
RULE_ORDER = {rule: position for position, rule in enumerate(RULES)}
