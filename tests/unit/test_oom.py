"""The engine-log failure classifier, on captured real messages and healthy lines around them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.orchestrator.oom import (
    EVIDENCE_MAX_CHARS,
    REMEDIES,
    FailureKind,
    OomMatch,
    classify_line,
    scan_file,
    scan_lines,
)

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "oom"
EXPECTED: dict[str, dict[str, object]] = json.loads(
    (FIXTURES_DIR / "expected.json").read_text(encoding="utf-8")
)

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
]


@pytest.mark.parametrize("fixture_name", sorted(EXPECTED))
def test_scan_file_finds_expected_kind_and_line_in_fixture(fixture_name: str) -> None:
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


def test_scan_file_every_log_fixture_is_listed_in_expected() -> None:
    on_disk = {path.name for path in FIXTURES_DIR.glob("*.log")}

    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize(("line", "kind"), POSITIVE_LINES)
def test_classify_line_recognises_real_failure_message(line: str, kind: FailureKind) -> None:
    match = classify_line(line)

    assert match == OomMatch(kind=kind, evidence=line.strip()[:EVIDENCE_MAX_CHARS])


@pytest.mark.parametrize("line", NEGATIVE_LINES)
def test_classify_line_ignores_healthy_or_unrelated_line(line: str) -> None:
    assert classify_line(line) is None


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

    match = classify_line(line)

    assert match == OomMatch(FailureKind.GPU_OOM, "RuntimeError: CUDA error: out of memory")


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


def test_remedies_cover_every_kind_with_actionable_text() -> None:
    assert set(REMEDIES) == set(FailureKind)
    assert "max_model_len" in REMEDIES[FailureKind.KV_CACHE_INSUFFICIENT]
    assert "gpu_memory_util" in REMEDIES[FailureKind.KV_CACHE_INSUFFICIENT]
    assert "gpu_memory_util" in REMEDIES[FailureKind.GPU_OOM]
    assert "max_num_seqs" in REMEDIES[FailureKind.GPU_OOM]
    assert "memory_max" in REMEDIES[FailureKind.HOST_OOM]


def test_failure_kind_values_match_the_api_contract() -> None:
    assert [str(kind) for kind in FailureKind] == [
        "gpu_oom",
        "kv_cache_insufficient",
        "host_oom",
    ]
