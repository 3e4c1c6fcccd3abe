"""The engine-log failure classifier, on captured real messages and healthy lines around them.

The fixtures in tests/fixtures/oom/ are split (see its README.md): the build split must scan to
its exact kind and line; the held-out split is measured as a whole, recall and precision.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.orchestrator.failures import OOM_KINDS, FailureKind
from app.orchestrator.oom import (
    EVIDENCE_MAX_CHARS,
    LogScanner,
    OomFigures,
    classify_line,
    scan_file,
    scan_lines,
)
from app.orchestrator.oom_rules import BARE_KILLED, PREFILTER_TOKENS, RULES, Rule

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "oom"
EXPECTED: dict[str, dict[str, object]] = json.loads(
    (FIXTURES_DIR / "expected.json").read_text(encoding="utf-8")
)
BUILD = sorted(name for name, item in EXPECTED.items() if item["split"] == "build")
HELD_OUT = sorted(name for name, item in EXPECTED.items() if item["split"] == "heldout")
ESC = "\x1b"

POSITIVE_LINES: list[tuple[str, FailureKind]] = [
    # GPU
    (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 350.00 MiB. GPU 0 has a "
        "total capacity of 23.68 GiB of which 212.81 MiB is free.",
        FailureKind.GPU_OOM,
    ),
    (
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB "
        "(GPU 0; 79.15 GiB total capacity; 77.90 GiB already allocated)",
        FailureKind.GPU_OOM,
    ),
    (
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total "
        "capacity; 13.11 GiB already allocated; 1.23 GiB free; 13.34 GiB reserved in total)",
        FailureKind.GPU_OOM,
    ),
    ("RuntimeError: CUDA error: out of memory", FailureKind.GPU_OOM),
    ("RuntimeError: HIP error: out of memory", FailureKind.GPU_OOM),
    (
        "Search for `cudaErrorMemoryAllocation' in "
        "https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more "
        "information.",
        FailureKind.GPU_OOM,
    ),
    ("hipErrorOutOfMemory: out of memory", FailureKind.GPU_OOM),
    (
        "(VllmWorker rank=3 pid=1090) ERROR 06-05 06:18:13 [multiproc_executor.py:470] "
        "RuntimeError: CUDA error: out of memory",
        FailureKind.GPU_OOM,
    ),
    (
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        FailureKind.GPU_OOM,
    ),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", FailureKind.GPU_OOM),
    (
        "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 64.00 MiB. GPU 0 has a "
        "total capacity of 15.98 GiB of which 22.00 MiB is free.",
        FailureKind.GPU_OOM,
    ),
    (
        "torch.OutOfMemoryError: XPU out of memory. Tried to allocate 192.00 MiB.",
        FailureKind.GPU_OOM,
    ),
    (
        "worker-6:56890:56890 [0] enqueue.cc:267 NCCL WARN Cuda failure 'out of memory'",
        FailureKind.GPU_OOM,
    ),
    (
        "ERROR 03-19 10:55:18 [engine.py:158] OutOfMemoryError('CUDA out of memory. Tried to "
        "allocate 128.00 MiB. GPU 0 has a total capacity of 79.33 GiB of which 16.00 MiB "
        "is free.')",
        FailureKind.GPU_OOM,
    ),
    (
        "RuntimeError: CUDA out of memory occurred when warming up sampler with 256 dummy "
        "requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when "
        "initializing the engine.",
        FailureKind.GPU_OOM,
    ),
    (
        "(EngineCore_DP0 pid=6940) ValueError: Free memory on device cuda:1 (19.77/22.05 GiB) on "
        "startup is less than desired GPU memory utilization (0.9, 19.84 GiB). Decrease GPU "
        "memory utilization or reduce GPU memory used by other processes.",
        FailureKind.GPU_OOM,
    ),
    (
        "ValueError: Free memory on device (31.44/47.38 GiB) on startup is less than desired GPU "
        "memory utilization (0.95, 45.01 GiB).",
        FailureKind.GPU_OOM,
    ),
    # KV cache
    (
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`VLLM_CPU_KVCACHE_SPACE` when initializing the engine.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "ValueError: To serve at least one request with the models's max seq len (4096), "
        "(2.00 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(1.00 GiB). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
        "initializing the engine.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "ValueError: To serve at least one request with the model's max seq len (100000), "
        "(4.26 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(4.25 GiB).",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "The model's max seq len (32768) is larger than the maximum number of tokens that can be "
        "stored in KV cache (12345). Try increasing gpu_memory_utilization or decreasing "
        "max_model_len when initializing the engine.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens "
        "that can be stored in KV cache (13104). Try increasing `VLLM_CPU_KVCACHE_SPACE` or "
        "decreasing `max_model_len` when initializing the engine.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    # Host
    (
        "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",
        FailureKind.HOST_OOM,
    ),
    (
        "The actor is dead because its worker process has died. Worker exit type: USER_ERROR "
        "Worker exit detail: Task was killed due to the node running low on memory.",
        FailureKind.HOST_OOM,
    ),
    (
        "(raylet) node_manager.cc:3007: 2 Workers (tasks / actors) killed due to memory pressure "
        "(OOM), 0 Workers crashed due to other reasons at node",
        FailureKind.HOST_OOM,
    ),
    ("Out of memory: Killed process 1234 (python)", FailureKind.HOST_OOM),
    (
        "[Sun Mar 30 08:24:00 2025] Out of memory: Killed process 7899 (python) "
        "total-vm:26184840kB, anon-rss:15370088kB, file-rss:0kB",
        FailureKind.HOST_OOM,
    ),
    (
        "Memory cgroup out of memory: Killed process 31201 (python3) total-vm:53317004kB",
        FailureKind.HOST_OOM,
    ),
    (
        "Out of memory: Kill process 4321 (python) score 901 or sacrifice child",
        FailureKind.HOST_OOM,
    ),
    (
        "[2059991.491436] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,"
        "mems_allowed=0,global_oom,task_memcg=/user.slice,task=python3,pid=25315,uid=0",
        FailureKind.HOST_OOM,
    ),
    (
        "pool invoked oom-killer: gfp_mask=0x6200ca(GFP_HIGHUSER_MOVABLE), order=0",
        FailureKind.HOST_OOM,
    ),
    (
        "vllm-mistral-7b.service: A process of this unit has been killed by the OOM killer.",
        FailureKind.HOST_OOM,
    ),
    ("vllm-mistral-7b.service: Failed with result 'oom-kill'.", FailureKind.HOST_OOM),
    ("Killed", FailureKind.HOST_OOM),
    ("Killed\n", FailureKind.HOST_OOM),
    (
        "/opt/run.sh: line 12: 41873 Killed                  vllm serve /models/m",
        FailureKind.HOST_OOM,
    ),
    ("terminate called after throwing an instance of 'std::bad_alloc'", FailureKind.HOST_OOM),
    ("  what():  std::bad_alloc", FailureKind.HOST_OOM),
    ("MemoryError", FailureKind.HOST_OOM),
    (
        "(EngineCore_DP0 pid=5120) ERROR 11-23 10:52:31 [core.py:708] MemoryError",
        FailureKind.HOST_OOM,
    ),
    ("MemoryError: Unable to allocate 3.20 GiB for an array", FailureKind.HOST_OOM),
    ("OSError: [Errno 12] Cannot allocate memory", FailureKind.HOST_OOM),
    (
        "RuntimeError: unable to mmap 16933256392 bytes from file </m/model.safetensors>: "
        "Cannot allocate memory (12)",
        FailureKind.HOST_OOM,
    ),
    # Found on logs the rules were not first written from (tests/fixtures/oom/README.md).
    (
        "ValueError: Available memory on node 0 (7.11/8.71 GiB) on kv cache allocation is less "
        "than requested memory for kv (1862.65 GiB). Decrease --kv-cache-memory-bytes, "
        "VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other processes.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "(EngineCore_DP0 pid=22551) INFO 06-29 14:49:31 [gpu_worker.py:298] Available KV cache "
        "memory: -8.42 GiB",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "INFO 03-10 22:12:16 worker.py:295] model weights take 5.43GiB; non_torch_memory takes "
        "-0.51GiB; PyTorch activation peak memory takes 1.42GiB; the rest of the memory reserved "
        "for KV Cache is -0.94GiB.",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "INFO 03-10 22:12:16 executor_base.py:110] # cuda blocks: 0, # CPU blocks: 4681",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    (
        "INFO 03-10 22:12:16 executor_base.py:115] Maximum concurrency for 4200 tokens per "
        "request: 0.00x",
        FailureKind.KV_CACHE_INSUFFICIENT,
    ),
    ("RuntimeError: Triton Error [CUDA]: out of memory", FailureKind.GPU_OOM),
    ("CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:62", FailureKind.GPU_OOM),
    (
        "host:88412:88590 [1] include/alloc.h:125 NCCL WARN Cuda failure 2 'out of memory'",
        FailureKind.GPU_OOM,
    ),
    (
        "RuntimeError: NPU out of memory. Tried to allocate 30.00 MiB (NPU 3; 60.96 GiB total "
        "capacity; 60.34 GiB already allocated; 14.24 MiB free)",
        FailureKind.GPU_OOM,
    ),
    (
        "RuntimeError: MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: "
        "1.17 GB, max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool.",
        FailureKind.GPU_OOM,
    ),
    ("RuntimeError: UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY", FailureKind.GPU_OOM),
    ("RuntimeError: CUDA driver error: out of memory", FailureKind.GPU_OOM),
    ("cuda.bindings: CUDA_ERROR_OUT_OF_MEMORY: out of memory", FailureKind.GPU_OOM),
    ("torch.OutOfMemoryError", FailureKind.GPU_OOM),
    (
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Error allocating device "
        "buffer: Attempting to allocate 1.00G. That was not possible.",
        FailureKind.GPU_OOM,
    ),
    (
        "ray.exceptions.OutOfMemoryError: 1 worker(s) were killed due to the node running low "
        "on memory.",
        FailureKind.HOST_OOM,
    ),
    (
        "Memory on the node (IP: 10.0.0.5, ID: 3486ef) where the task (actor ID: 46c8, "
        "name=RayWorkerWrapper.__init__, pid=13378, memory used=3.37GB) was running was "
        "59.84GB / 62.51GB (0.957347), which exceeds the memory usage threshold of 0.95. Ray "
        "killed this worker (ID: 5dd7) because it was the most recently scheduled task",
        FailureKind.HOST_OOM,
    ),
    ("Worker exit type: NODE_OUT_OF_MEMORY Worker exit detail: none", FailureKind.HOST_OOM),
    ("      Reason:       OOMKilled", FailureKind.HOST_OOM),
    ('            "OOMKilled": true,', FailureKind.HOST_OOM),
    (
        "systemd-oomd[812]: Killed /user.slice/app.slice/vllm.service due to memory pressure "
        "for /user.slice being 82.31% > 50.00% for > 20s with reclaim activity",
        FailureKind.HOST_OOM,
    ),
    ("oom_reaper: reaped process 40213 (python3), now anon-rss:0kB", FailureKind.HOST_OOM),
    (
        "RuntimeError: [enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough "
        "memory: you tried to allocate 1073741824 bytes.",
        FailureKind.HOST_OOM,
    ),
    (
        "ValueError: Available memory on node 0 (7.24/8.71 GiB) on startup is less than desired "
        "CPU memory utilization (0.99, 8.63 GiB).",
        FailureKind.HOST_OOM,
    ),
    ("2025-03-02T11:05:37.006145890Z Killed", FailureKind.HOST_OOM),
    ("vllm-1  | Killed", FailureKind.HOST_OOM),
    ("2025-07-10T08:59:40.1Z stderr F Killed", FailureKind.HOST_OOM),
]

NEGATIVE_LINES: list[str] = [
    "(EngineCore_DP0 pid=387) INFO 03-08 16:44:29 [gpu_worker.py:456] "
    "Available KV cache memory: 2.30 GiB",
    "INFO 11-23 10:02:35 [gpu_model_runner.py:2653] Model loading took 2.05 GiB memory and "
    "3.1 seconds",
    "INFO 03-06 20:54:30 server_vllm.py:542] args: Namespace(host='0.0.0.0', port=8000, "
    "swap_space=4, gpu_memory_utilization=0.9, max_num_batched_tokens=None, max_num_seqs=256)",
    "+ exec vllm serve mistralai/Mistral-7B-Instruct-v0.3 --gpu-memory-utilization 0.9",
    "INFO 11-23 10:03:14 [kv_cache_utils.py:1091] Maximum concurrency for 8,192 tokens per "
    "request: 25.31x",
    "WARNING 07-06 10:46:19 [kv_cache_utils.py:1208] Add 3 padding layers, may waste at most "
    "5.00% KV cache memory",
    "INFO 12-18 05:06:12 llm_engine.py:207] # GPU blocks: 2000, # CPU blocks: 512",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "torch.AcceleratorError: CUDA error: an illegal memory access was encountered",
    "RuntimeError: NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details)",
    "RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with "
    "multiprocessing, you must use the 'spawn' start method",
    "INFO 03-27 10:29:01 [worker.py:267] Memory profiling takes 1.2 seconds",
    "INFO 12-20 20:25:46 worker.py:241] memory profiling takes 1.2 seconds",
    "INFO 11-23 10:03:14 [worker.py:250] KV cache memory: 1.00 GiB",
    "WARNING 11-23 10:03:14 [utils.py:91] calling torch.cuda.empty_cache() to release "
    "cached blocks",
    "(APIServer pid=41211) INFO 11-23 10:02:20 [model.py:1510] Using max model len 4096",
    "If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.",
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation",
    'INFO:     127.0.0.1:51734 - "GET /health HTTP/1.1" 200 OK',
    "(APIServer pid=713601) INFO 09-08 09:02:45 [launcher.py:101] Worker killed by signal SIGTERM",
    "Killed worker 3 after the grace period",
    "INFO 12-20 20:25:49 model_runner.py:1413] Capturing cudagraphs for decoding. If "
    "out-of-memory error occurs during cudagraph capture, consider decreasing "
    "`gpu_memory_utilization` or switching to eager mode.",
    "INFO 08-19 07:51:12 model_runner.py:1028] CUDA graphs can take additional 1~3 GiB memory "
    "per GPU. If you are running out of memory, consider decreasing `gpu_memory_utilization` "
    "or enforcing eager mode.",
    "WARNING 05-09 00:49:33 scheduler.py:1057 Sequence group 0 is preempted by "
    "PreemptionMode.RECOMPUTE mode because there is not enough KV cache space. Increase "
    "gpu_memory_utilization or tensor_parallel_size to provide more KV cache memory.",
    "INFO 11-23 10:03:13 [gpu_worker.py:456] Free memory on device cuda:0 (78.62/79.19 GiB) "
    "on startup. Desired GPU memory utilization is (0.9, 71.27 GiB).",
    "INFO 12-20 20:25:46 worker.py:241] model weights take 7.51GiB; non_torch_memory takes "
    "0.39GiB; PyTorch activation peak memory takes 2.53GiB; the rest of the memory reserved "
    "for KV Cache is 3.76GiB.",
    "Worker exit detail: Worker unexpectedly exits with a connection error code 2. There are "
    "some potential root causes. (1) The process is killed by SIGKILL by OOM killer due to "
    "high memory usage. (2) ray stop --force is called.",
    "INFO 11-23 11:20:02 [logger.py:43] Received request chatcmpl-5b0e: prompt: 'Why do I get "
    "torch.OutOfMemoryError: CUDA out of memory?', params: SamplingParams(n=1)",
    "    except MemoryError:",
    "INFO 11-23 10:02:43 [backends.py:548] Using cache directory: "
    "/root/.cache/vllm/torch_compile_cache/3f2a1c9e7b/rank_0_0/backbone",
    "",
    # Healthy lines of vLLM 0.32 (its CPU build included) and others that mention memory.
    "(Worker pid=27839) INFO 12-01 09:00:49 [cpu_worker.py:260] Explicitly set (1.0/8.71) GiB "
    "for KV cache on node 0.",
    "(EngineCore pid=27635) INFO 12-01 09:00:49 [kv_cache_utils.py:2327] CPU KV cache size: "
    "524,288 tokens, Maximum concurrency for 256 tokens per request: 2048.00x",
    "(APIServer pid=1) INFO 11-18 13:40:02 [api_utils.py:286] non-default args: {'port': 8000, "
    "'kv_cache_memory_bytes': 2000000000000}",
    "(EngineCore_DP0 pid=1) INFO 11-18 13:40:02 [gpu_worker.py:301] Initial free memory 78.62 "
    "GiB, reserved 20.00 GiB memory for KV Cache as specified by kv_cache_memory_bytes config "
    "and skipped memory profiling. If OOM'ed, check the difference of initial free memory.",
    "WARNING 11-18 13:40:09 [gpu_worker.py:512] consider lowering --gpu-memory-utilization to "
    "avoid OOM.",
    "WARNING 11-18 13:40:10 [fused_moe.py:1102] First inference may OOM due to the autotuner.",
    "[2025-07-03 12:45:27,563] LMCache WARNING: Failed to allocate memory for the KV cache.",
    '            "OOMKilled": false,',
    "      Reason:       Error",
    "scalellm exited with code 137",
    "vllm-tiny.service: Main process exited, code=killed, status=9/KILL",
    "vllm-tiny.service: Killing process 4102 (python3) with signal SIGKILL.",
    "ValueError: This model's maximum context length is 4096 tokens. However, you requested "
    "5000 tokens.",
    "UserWarning: resource_tracker: There appear to be 2 leaked shared_memory objects to clean "
    "up at shutdown",
    "INFO 11-22 03:12:40 distributed_gpu_executor.py:57] # GPU blocks: 1638, # CPU blocks: 0",
    "INFO 11-22 03:12:40 distributed_gpu_executor.py:61] Maximum concurrency for 16384 tokens "
    "per request: 1.60x",
    "grpc._channel._InactiveRpcError: status = StatusCode.RESOURCE_EXHAUSTED: Received message "
    "larger than max (4194314 vs. 4194304)",
    "    except torch.OutOfMemoryError as error:",
]


def _kind_and_evidence(line: str) -> tuple[FailureKind, str] | None:
    match = classify_line(line)
    return None if match is None else (match.kind, match.evidence)


@pytest.mark.parametrize("fixture_name", BUILD)
def test_scan_file_finds_expected_kind_and_line_in_build_fixture(fixture_name: str) -> None:
    expected = EXPECTED[fixture_name]
    path = FIXTURES_DIR / fixture_name

    result = scan_file(path)

    assert result["file"] == str(path)
    assert result["kind"] == expected["kind"]
    assert result["line"] == expected["line"]
    if expected["kind"] is None:
        assert result["evidence"] is None
    else:
        evidence = result["evidence"]
        assert isinstance(evidence, str)
        assert evidence and evidence == evidence.strip()
        assert len(evidence) <= EVIDENCE_MAX_CHARS


def test_scan_file_on_held_out_logs_reaches_recall_and_precision_goal() -> None:
    """Logs from sources the rules were not written from (tests/fixtures/oom/README.md): a
    found failure counts when its kind is right, a wrong kind is a false positive and a miss."""
    true_positives = false_positives = false_negatives = 0
    wrong: list[str] = []
    for name in HELD_OUT:
        expected = EXPECTED[name]["kind"]
        found = scan_file(FIXTURES_DIR / name)["kind"]
        if found is not None and found == expected:
            true_positives += 1
        if found is not None and found != expected:
            false_positives += 1
        if expected is not None and found != expected:
            false_negatives += 1
        if found != expected:
            wrong.append(f"{name}: expected {expected}, found {found}")
    positives = sum(1 for name in HELD_OUT if EXPECTED[name]["kind"] is not None)
    assert positives >= 30 and len(HELD_OUT) - positives >= 15, "the held-out set shrank"
    recall = true_positives / (true_positives + false_negatives)
    precision = true_positives / max(1, true_positives + false_positives)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, wrong)


def test_scan_file_every_log_fixture_is_listed_in_expected() -> None:
    on_disk = {str(path.relative_to(FIXTURES_DIR)) for path in FIXTURES_DIR.rglob("*.log")}

    assert on_disk == set(EXPECTED)
    assert {item["split"] for item in EXPECTED.values()} == {"build", "heldout"}


def test_scan_file_every_fixture_has_its_source_in_the_readme() -> None:
    readme = (FIXTURES_DIR / "README.md").read_text(encoding="utf-8")

    missing = [name for name in EXPECTED if f"| {Path(name).name} |" not in readme]

    assert missing == []


@pytest.mark.parametrize(("line", "kind"), POSITIVE_LINES)
def test_classify_line_recognises_real_failure_message(line: str, kind: FailureKind) -> None:
    assert _kind_and_evidence(line) == (kind, line.strip()[:EVIDENCE_MAX_CHARS])


@pytest.mark.parametrize("line", NEGATIVE_LINES)
def test_classify_line_ignores_healthy_or_unrelated_line(line: str) -> None:
    assert classify_line(line) is None


def test_classify_line_emits_only_memory_failure_kinds() -> None:
    kinds = {kind for _line, kind in POSITIVE_LINES} | {rule.kind for rule in RULES}

    assert kinds == set(OOM_KINDS)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.pattern.pattern[:40])
def test_oom_rules_each_cites_its_source_and_matches_a_real_line(rule: Rule) -> None:
    texts = [line for line, _kind in POSITIVE_LINES]

    assert len(rule.source) > 10
    assert any(rule.pattern.search(text) for text in texts), "a rule nothing exercises"


def test_oom_rules_anchors_never_hide_a_match() -> None:
    """Each rule runs only when one of its anchors is in the squashed line: on every real
    positive line where a rule's regex matches, one of its anchors must be there too."""
    texts = [line for line, _kind in POSITIVE_LINES] + [
        line
        for name in EXPECTED
        for line in (FIXTURES_DIR / name).read_text(encoding="utf-8").splitlines()
    ]
    for rule in (*RULES, BARE_KILLED):
        assert all(any(token in anchor for token in PREFILTER_TOKENS) for anchor in rule.anchors)
        for text in texts:
            if rule.pattern.search(text):
                squashed = text.lower().replace(" ", "")
                assert any(anchor in squashed for anchor in rule.anchors), (rule.source, text)


def test_classify_line_prefers_kv_cache_over_gpu_oom() -> None:
    line = (
        "RuntimeError: CUDA out of memory while profiling; ValueError: No available memory for "
        "the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
    )

    match = classify_line(line)

    assert match is not None
    assert match.kind is FailureKind.KV_CACHE_INSUFFICIENT


def test_classify_line_prefers_gpu_oom_over_host_oom() -> None:
    line = (
        "ray.exceptions.RayTaskError(OutOfMemoryError): ray::RayWorkerWrapper.execute_method() "
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB; MemoryError"
    )

    match = classify_line(line)

    assert match is not None
    assert match.kind is FailureKind.GPU_OOM


def test_classify_line_truncates_evidence_to_limit() -> None:
    line = "  torch.OutOfMemoryError: CUDA out of memory. " + "x" * 2000 + "  \n"

    match = classify_line(line)

    assert match is not None
    assert len(match.evidence) == EVIDENCE_MAX_CHARS
    assert match.evidence.startswith("torch.OutOfMemoryError: CUDA out of memory.")


def test_classify_line_takes_evidence_from_segment_after_carriage_return() -> None:
    line = "Processed prompts:   6%| 29/512\rRuntimeError: CUDA error: out of memory\n"

    assert _kind_and_evidence(line) == (
        FailureKind.GPU_OOM,
        "RuntimeError: CUDA error: out of memory",
    )


def test_classify_line_strips_ansi_colour_codes_from_the_evidence() -> None:
    # Python 3.13 colours the exception type; vLLM colours its process prefix.
    line = f"{ESC}[1;36m(EngineCore_DP0 pid=4121){ESC}[0;0m {ESC}[1;35mMemoryError{ESC}[0m"

    assert _kind_and_evidence(line) == (
        FailureKind.HOST_OOM,
        "(EngineCore_DP0 pid=4121) MemoryError",
    )


def test_classify_line_strips_colour_codes_a_paste_kept_without_escape() -> None:
    line = "[1;36m(EngineCore_DP0 pid=7)[0;0m [31mKilled[0m"

    assert _kind_and_evidence(line) == (FailureKind.HOST_OOM, "(EngineCore_DP0 pid=7) Killed")


@pytest.mark.parametrize(
    "prefix",
    [
        "2025-07-10 08:59:40 ",
        "2025-07-10T08:59:40.123456789Z ",
        "2025-07-10T08:59:40.123456789Z stderr F ",
        "2025-07-10 08:59:40,118 ERROR ",
        "vllm-1  | ",
        "Jul 10 08:59:40 gpu-node vllm[4102]: ",
        "[ 8123.456789] ",
        "(EngineCore_DP0 pid=1) ERROR 07-09 08:59:40 [core.py:708] ",
        "2025-07-10 08:59:40 ERROR 07-09 08:59:40 [core.py:708] ",
    ],
)
def test_classify_line_sees_a_bare_killed_behind_logger_and_container_prefixes(
    prefix: str,
) -> None:
    match = classify_line(prefix + "Killed")

    assert match is not None and match.kind is FailureKind.HOST_OOM


def test_classify_line_does_not_take_killed_inside_a_sentence_for_the_shell() -> None:
    assert classify_line("2025-07-10 08:59:40 INFO Killed 3 idle workers") is None


def test_log_scanner_joins_a_message_wrapped_inside_a_word() -> None:
    scanner = LogScanner()
    first = (
        "(EngineCore pid=316) ValueError: To serve at least one request with the model's max "
        "seq len (100000), (4.26 GiB KV cach"
    )
    second = (
        "e is needed, which is larger than the available KV cache memory (4.25 GiB). Based on "
        "the available memory, the estimated maximum model length is 99840."
    )

    assert scanner.feed(first) is None
    match = scanner.feed(second)

    assert match is not None
    assert match.kind is FailureKind.KV_CACHE_INSUFFICIENT
    assert "4.26 GiB KV cache is needed" in match.evidence
    assert match.figures.needed == "4.26 GiB" and match.figures.available == "4.25 GiB"
    assert match.figures.max_model_len == 100000


def test_log_scanner_joins_a_wrap_between_words_behind_a_container_prefix() -> None:
    lines = [
        "2025-07-10T08:59:40.1Z stderr F RuntimeError: CUDA out of",
        "2025-07-10T08:59:40.1Z stderr F memory. Tried to allocate 20.00 MiB",
    ]

    found = scan_lines(lines)

    assert found is not None
    assert found[0] == 2 and found[1].kind is FailureKind.GPU_OOM


def test_log_scanner_does_not_join_a_line_to_one_that_already_matched() -> None:
    scanner = LogScanner()

    assert scanner.feed("RuntimeError: CUDA error: out of memory") is not None
    assert scanner.feed("CUDA kernel errors might be asynchronously reported") is None


def test_log_scanner_takes_a_host_oom_in_kv_cache_allocation_for_the_kv_cache() -> None:
    # vLLM's CPU build under a memory limit (tests/fixtures/oom/heldout/...enomem.log).
    prefix = "(Worker pid=10401) ERROR 12-01 08:49:33 [multiproc_executor.py:1063] "
    lines = [
        prefix + '  File "/venv/vllm/v1/worker/utils.py", line 596, in allocate_kv_cache',
        prefix + "    buf = torch.zeros(buf_size, dtype=torch.int8, device=device)",
        prefix + "          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        prefix + "RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
        "can't allocate memory: you tried to allocate 5999951872 bytes. Error code 12 (Cannot "
        "allocate memory)",
    ]

    found = scan_lines(lines)

    assert found is not None
    line_number, match = found
    assert line_number == 4 and match.kind is FailureKind.KV_CACHE_INSUFFICIENT
    assert match.figures.needed == "5999951872 bytes"
    assert "kv_cache_memory_bytes" in match.figures.flags


def test_log_scanner_leaves_a_host_oom_elsewhere_a_host_oom() -> None:
    lines = [
        '  File "/venv/vllm/v1/worker/utils.py", line 596, in allocate_kv_cache',
        *["INFO serving"] * 20,
        "RuntimeError: DefaultCPUAllocator: not enough memory: you tried to allocate 64 bytes.",
    ]

    found = scan_lines(lines)

    assert found is not None and found[1].kind is FailureKind.HOST_OOM


@pytest.mark.parametrize(
    ("line", "figures"),
    [
        (
            "ValueError: To serve at least one request with the model's max seq len (40960), "
            "(4.38 GiB KV cache is needed, which is larger than the available KV cache memory "
            "(4.00 GiB). Based on the available memory, the estimated maximum model length is "
            "37376. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
            "initializing the engine.",
            OomFigures(
                needed="4.38 GiB",
                available="4.00 GiB",
                max_model_len=40960,
                estimated_max_model_len=37376,
                flags=("gpu_memory_utilization", "max_model_len"),
            ),
        ),
        (
            "ValueError: The model's max seq len (32768) is larger than the maximum number of "
            "tokens that can be stored in KV cache (13104). Try increasing "
            "`VLLM_CPU_KVCACHE_SPACE` or decreasing `max_model_len` when initializing the engine.",
            OomFigures(
                needed="32768 tokens",
                available="13104 tokens",
                max_model_len=32768,
                flags=("VLLM_CPU_KVCACHE_SPACE", "max_model_len"),
            ),
        ),
        (
            "ValueError: Available memory on node 0 (7.11/8.71 GiB) on kv cache allocation is "
            "less than requested memory for kv (1862.65 GiB). Decrease --kv-cache-memory-bytes, "
            "VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other processes.",
            OomFigures(
                needed="1862.65 GiB",
                available="7.11 GiB",
                total="8.71 GiB",
                flags=("kv_cache_memory_bytes", "VLLM_CPU_KVCACHE_SPACE"),
            ),
        ),
        (
            "INFO 06-29 14:49:31 [gpu_worker.py:298] Available KV cache memory: -8.42 GiB",
            OomFigures(available="-8.42 GiB", flags=("gpu_memory_utilization", "max_model_len")),
        ),
        (
            "ValueError: No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine.",
            OomFigures(flags=("gpu_memory_utilization",)),
        ),
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
            "total capacity of 79.19 GiB of which 1.12 GiB is free.",
            OomFigures(
                needed="2.00 GiB",
                available="1.12 GiB",
                total="79.19 GiB",
                flags=("gpu_memory_utilization", "max_num_seqs", "max_model_len"),
            ),
        ),
        (
            "ValueError: Free memory on device cuda:1 (19.77/22.05 GiB) on startup is less than "
            "desired GPU memory utilization (0.9, 19.84 GiB). Decrease GPU memory utilization or "
            "reduce GPU memory used by other processes.",
            OomFigures(
                needed="19.84 GiB",
                available="19.77 GiB",
                total="22.05 GiB",
                flags=("gpu_memory_utilization", "max_num_seqs", "max_model_len"),
            ),
        ),
        (
            "Out of memory: Killed process 7899 (python) total-vm:26184840kB, "
            "anon-rss:15370088kB, file-rss:0kB",
            OomFigures(needed="15370088kB", total="26184840kB"),
        ),
    ],
)
def test_classify_line_extracts_the_figures_the_message_states(
    line: str, figures: OomFigures
) -> None:
    match = classify_line(line)

    assert match is not None
    assert match.figures == figures


def test_oom_figures_summary_names_the_spec_settings_to_change() -> None:
    figures = OomFigures(
        needed="4.38 GiB",
        available="4.00 GiB",
        max_model_len=40960,
        estimated_max_model_len=37376,
        flags=("gpu_memory_utilization", "max_model_len"),
    )

    assert figures.summary() == (
        "needed 4.38 GiB, available 4.00 GiB (max_model_len 40960, about 37376 fits); "
        "change gpu_memory_util or max_model_len"
    )
    assert figures.as_dict()["settings"] == ["gpu_memory_util", "max_model_len"]
    assert OomFigures().as_dict() == {} and OomFigures().summary() == ""


def test_scan_lines_returns_first_match_with_one_based_line_number() -> None:
    lines = [
        "INFO Available KV cache memory: 2.30 GiB",
        "ERROR ... RuntimeError: CUDA error: out of memory",
        "Killed",
    ]

    found = scan_lines(lines)

    assert found is not None
    line_number, match = found
    assert line_number == 2
    assert match.kind is FailureKind.GPU_OOM


def test_scan_lines_returns_none_without_match() -> None:
    assert (
        scan_lines(iter(["INFO: Application startup complete.", "Using max model len 4096"]))
        is None
    )


def test_scan_lines_reads_a_generator_lazily_and_stops_at_first_match() -> None:
    pulled: list[int] = []

    def numbered_lines() -> Iterator[str]:
        for index in range(1, 1_000_000):
            pulled.append(index)
            yield "Killed" if index == 3 else "INFO serving"

    found = scan_lines(numbered_lines())

    assert found is not None
    assert found[0] == 3
    assert pulled == [1, 2, 3]


def test_scan_file_finds_match_near_end_of_large_file(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    oom_line = "(EngineCore_DP0 pid=2) ERROR 11-23 10:11:19 [core.py:708] MemoryError\n"
    healthy = (
        '(APIServer pid=1) INFO:     127.0.0.1:51734 - "GET /health HTTP/1.1" 200 OK\n'
        "(EngineCore_DP0 pid=2) INFO 11-23 10:03:14 [gpu_worker.py:298] "
        "Available KV cache memory: 25.31 GiB\n"
    )
    with log_path.open("w", encoding="utf-8") as log_file:
        for _ in range(25_000):
            log_file.write(healthy)
        log_file.write(oom_line)
        log_file.write("(APIServer pid=1) RuntimeError: Engine core initialization failed.\n")

    result = scan_file(log_path)

    assert result["kind"] == "host_oom"
    assert result["line"] == 50_001
    assert result["evidence"] == oom_line.strip()


def test_scan_file_finds_match_inside_line_longer_than_read_chunk(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    # One 3 MB line with the message in its middle, then a second line: the file is still
    # read in bounded pieces and the line number is that of the long line.
    padding = "Processed prompts: " + "#" * 1_500_000
    log_path.write_text(
        "INFO start\n" + padding + " torch.OutOfMemoryError: CUDA out of memory. " + padding + "\n",
        encoding="utf-8",
    )

    result = scan_file(log_path)

    assert result["kind"] == "gpu_oom"
    assert result["line"] == 2


def test_scan_file_finds_a_message_cut_by_the_read_chunk(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    message = "ValueError: No available memory for the cache blocks."
    # The message straddles the boundary of the first 64 Ki-character piece.
    padding = "#" * (64 * 1024 - 20)
    log_path.write_text(padding + message + "\n", encoding="utf-8")

    result = scan_file(log_path)

    assert result["kind"] == "kv_cache_insufficient"
    assert result["line"] == 1


def test_scan_file_counts_only_newlines_as_line_ends(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    log_path.write_bytes(b"bar 1%\rbar 2%\rbar 3%\nsecond\r\nKilled\r\n")

    result = scan_file(log_path)

    assert result["kind"] == "host_oom"
    assert result["line"] == 3
    assert result["evidence"] == "Killed"


def test_scan_file_without_match_returns_none_fields(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    log_path.write_text("INFO: Application startup complete.\n" * 100, encoding="utf-8")

    result = scan_file(log_path)

    assert result == {"file": str(log_path), "kind": None, "line": None, "evidence": None}


def test_scan_file_tolerates_undecodable_bytes(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    log_path.write_bytes(b"\xff\xfe garbage\nRuntimeError: CUDA error: out of memory\n")

    result = scan_file(log_path)

    assert result["kind"] == "gpu_oom"
    assert result["line"] == 2


def test_scan_file_raises_oserror_for_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        scan_file(tmp_path / "absent.log")


def test_scan_file_raises_oserror_for_directory(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        scan_file(tmp_path)


def test_oom_prefix_pattern_stays_linear_on_hostile_input() -> None:
    # A line of many prefix-like pieces must not make the prefix regex backtrack for long.
    line = "(a) " * 5000 + "[x] " * 5000 + "Killed"

    match = classify_line(line)

    assert match is not None and match.kind is FailureKind.HOST_OOM
