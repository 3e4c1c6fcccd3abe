"""Sort engine log lines into memory failures: GPU OOM, KV cache too small, host OOM.

Every line an engine writes passes through `classify_line`, so it is a pure function with a cheap
prefilter: a lowercased substring test rejects the vast majority of lines before any regex runs.
The patterns are the messages vLLM, PyTorch, Ray, systemd and the Linux kernel really print
(tests/fixtures/oom/SOURCES.md lists where each comes from). They are deliberately narrow: a
healthy vLLM start-up mentions memory dozens of times ("Available KV cache memory: 2.30 GiB",
"gpu_memory_utilization=0.9", "If out-of-memory error occurs during cudagraph capture ...") and
none of those may count as a failure.

Precedence, when one line could match several kinds: kv_cache_insufficient, then gpu_oom, then
host_oom. The KV cache messages are the most specific (they name the fix), and a GPU OOM that
travels inside a Ray or Python wrapper is still a GPU OOM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

EVIDENCE_MAX_CHARS = 500

# A log with no newline for gigabytes must not be read into one string: scan_file reads at most
# this many characters at a time, and judges each piece with the tail of the one before, so a
# message that straddles two pieces is still seen (every pattern is far shorter than the tail).
_READ_CHUNK_CHARS = 64 * 1024
_CARRY_CHARS = 1024


class FailureKind(StrEnum):
    GPU_OOM = "gpu_oom"
    KV_CACHE_INSUFFICIENT = "kv_cache_insufficient"
    HOST_OOM = "host_oom"


@dataclass(frozen=True)
class OomMatch:
    kind: FailureKind
    evidence: str  # the matching line, stripped, at most EVIDENCE_MAX_CHARS characters


REMEDIES: dict[FailureKind, str] = {
    FailureKind.KV_CACHE_INSUFFICIENT: (
        "The KV cache cannot hold one request of max_model_len tokens; restarting with the same "
        "settings fails the same way. Raise gpu_memory_util or lower max_model_len (on vLLM's CPU "
        "backend, raise VLLM_CPU_KVCACHE_SPACE)."
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
}

# Substrings (of the lowercased line) that every pattern below needs one of.
_PREFILTER_TOKENS = ("memory", "cache", "kill", "oom", "bad_alloc", "alloc_failed")

# vLLM's request logger echoes user prompts; a prompt that says "CUDA out of memory" must not
# look like a failure.
_UNTRUSTED_ECHO_MARKER = "Received request "


def _compile_all(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern) for pattern in patterns)


# Every pattern starts with a literal: Python's regex engine then scans for that literal with a
# fast substring search, where a leading \b, class or alternation costs ~25x more per line.
# Boundaries that matter are written as lookbehinds after the literal.

_KV_CACHE_PATTERNS = _compile_all(
    # vLLM v0 worker, v1 kv_cache_utils, and the CPU worker's VLLM_CPU_KVCACHE_SPACE form.
    r"No available memory for the cache blocks",
    # vLLM v0 and the CPU backend.
    r"max seq len \(\d+\) is larger than the maximum number of tokens that can be stored "
    r"in KV cache",
    # vLLM v1 (_check_enough_kv_cache_memory).
    r"KV cache is needed, which is larger than the available KV cache memory",
)

_GPU_OOM_PATTERNS = _compile_all(
    # PyTorch's allocators: torch.OutOfMemoryError / torch.cuda.OutOfMemoryError / RuntimeError
    # (older torch) on NVIDIA, ROCm and Intel GPUs; also vLLM's "CUDA out of memory occurred
    # when warming up sampler".
    r"CUDA out of memory",
    r"HIP out of memory",
    r"XPU out of memory",
    # CUDA runtime errors surfaced by torch, e.g. from CUDA graph capture_end().
    r"CUDA error: out of memory",
    r"HIP error: out of memory",
    r"cudaErrorMemoryAllocation",
    r"hipErrorOutOfMemory",
    # cuBLAS / cuDNN handle creation when the device has no room left.
    r"CUBLAS_STATUS_ALLOC_FAILED",
    r"CUDNN_STATUS_ALLOC_FAILED",
    # NCCL's WARN line for a failed cudaMalloc.
    r"Cuda failure '?out of memory",
    # vLLM refuses to start when free memory is below gpu_memory_utilization x total.
    r"Free memory on device\b.*\bis less than desired GPU memory utilization",
)

_HOST_OOM_PATTERNS = _compile_all(
    # Ray's memory monitor.
    r"Task was killed due to the node running low on memory",
    r"ray\.exceptions\.OutOfMemoryError",
    r"killed due to memory pressure \(OOM\)",
    # Linux kernel OOM killer, global and cgroup ("Memory cgroup out of memory: ...").
    r"ut of memory: Kill(?:ed)? process \d+",
    r"oom-kill:",
    r"invoked oom-killer",
    # systemd, when a unit's MemoryMax= is hit.
    r"killed by the OOM killer",
    r"Failed with result 'oom-kill'",
    # The shell reporting a child that got SIGKILL: bare, or bash's non-interactive form.
    r"^\s*Killed\s*$",
    r": line \d+:\s+\d+ Killed\b",
    # C++ and Python allocation failures ("MemoryError" as the exception line, not the tail of
    # OutOfMemoryError nor an "except MemoryError:" source line), and ENOMEM from mmap/fork.
    r"std::bad_alloc",
    r"MemoryError(?<![\w.]MemoryError)(?<!except MemoryError)(?::|\s*$)",
    r"Cannot allocate memory",
)

# Checked in this order: the first kind with a matching pattern wins.
_RULES: tuple[tuple[FailureKind, tuple[re.Pattern[str], ...]], ...] = (
    (FailureKind.KV_CACHE_INSUFFICIENT, _KV_CACHE_PATTERNS),
    (FailureKind.GPU_OOM, _GPU_OOM_PATTERNS),
    (FailureKind.HOST_OOM, _HOST_OOM_PATTERNS),
)


def _classify_segment(segment: str) -> OomMatch | None:
    lowered = segment.lower()
    if not any(token in lowered for token in _PREFILTER_TOKENS):
        return None
    if _UNTRUSTED_ECHO_MARKER in segment:
        return None
    for kind, patterns in _RULES:
        if any(pattern.search(segment) for pattern in patterns):
            return OomMatch(kind=kind, evidence=segment.strip()[:EVIDENCE_MAX_CHARS])
    return None


def classify_line(line: str) -> OomMatch | None:
    """Classify one log line; None when it shows no memory failure.

    Pure and cheap enough to run on every line an engine writes. A line that holds carriage
    returns (progress bars redrawn in place, with a message written after them) is judged
    piece by piece, and the evidence is the piece that matched.
    """
    if "\r" not in line:
        return _classify_segment(line)
    for segment in line.split("\r"):
        match = _classify_segment(segment)
        if match is not None:
            return match
    return None


def scan_lines(lines: Iterable[str]) -> tuple[int, OomMatch] | None:
    """The first memory failure in `lines` and its 1-based line number, or None."""
    for line_number, line in enumerate(lines, start=1):
        match = classify_line(line)
        if match is not None:
            return line_number, match
    return None


def _result(path: Path, found: tuple[int, OomMatch] | None) -> dict[str, object]:
    if found is None:
        return {"file": str(path), "kind": None, "line": None, "evidence": None}
    line_number, match = found
    return {
        "file": str(path),
        "kind": str(match.kind),
        "line": line_number,
        "evidence": match.evidence,
    }


def scan_file(path: Path) -> dict[str, object]:
    """Scan a log file for its first memory failure, reading it as a stream.

    Returns {"file", "kind", "line", "evidence"}; kind, line and evidence are None when nothing
    matched. Only "\\n" ends a line, so line numbers agree with `sed -n Np` even where progress
    bars wrote bare "\\r". Raises OSError when the file cannot be read; undecodable bytes are
    replaced, not fatal.
    """
    line_number = 1
    carry = ""  # the tail of the previous piece of an over-long line
    with path.open(encoding="utf-8", errors="replace", newline="\n") as log_file:
        while piece := log_file.readline(_READ_CHUNK_CHARS):
            match = classify_line(carry + piece)
            if match is not None:
                return _result(path, (line_number, match))
            if piece.endswith("\n"):
                line_number += 1
                carry = ""
            else:
                carry = piece[-_CARRY_CHARS:]
    return _result(path, None)
