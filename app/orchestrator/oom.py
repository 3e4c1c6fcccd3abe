"""Sort engine log lines into memory failures: GPU OOM, KV cache too small, host OOM.

Every line an engine writes passes through here, so the common path is a few substring tests: a
lowercased prefilter rejects the vast majority of lines before any regex runs. The rules (the
messages vLLM, PyTorch, Ray, systemd and the Linux kernel print, each with its source) live in
app/orchestrator/oom_rules.py; they are deliberately narrow, since a healthy vLLM start-up
mentions memory dozens of times ("Available KV cache memory: 2.30 GiB", "If out-of-memory error
occurs during cudagraph capture ...") and none of those may count as a failure.

What this module adds to the rules is the shape real logs arrive in: ANSI colour codes, container
and logger prefixes (`2025-07-10 08:59:40 ERROR 07-09 ...`, `vllm-1  | `, journald), progress bars
redrawn with `\\r`, and messages cut over two lines by a terminal's wrap or by the reader's
bounded pieces (`LogScanner` judges each line joined to the one before). For a match it also
extracts the figures the message states (needed vs available, the flags it names): see
`oom_figures.figures_of`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.orchestrator.failures import FailureKind
from app.orchestrator.oom_figures import OomFigures, figures_of
from app.orchestrator.oom_rules import (
    ANCHORED_BY_TOKEN,
    BARE_KILLED,
    PREFILTER_TOKENS,
    RULE_ORDER,
    Rule,
)

__all__ = [
    "EVIDENCE_MAX_CHARS",
    "FailureKind",
    "LogScanner",
    "OomFigures",
    "OomMatch",
    "classify_line",
    "scan_file",
    "scan_lines",
]

EVIDENCE_MAX_CHARS = 500

# A log with no newline for gigabytes must not be read into one string: scan_file reads at most
# this many characters at a time and hands them on as lines; LogScanner joins adjacent pieces.
_READ_CHUNK_CHARS = 64 * 1024
# How much of each side of a line break is judged together: longer than any rule's phrase (the
# longest, vLLM v0's "max seq len (N) is larger than ... stored in KV cache", is ~90 characters).
_WRAP_CHARS = 128
# ... and how much is kept for the evidence and the figures once the join matched.
_JOIN_CHARS = 400

# A traceback frame of vLLM allocating the KV cache tensors (v1 worker/utils.py allocate_kv_cache,
# gpu_model_runner.py initialize_kv_cache_tensors, v0 cache_engine.py / cpu_worker.py
# _allocate_kv_cache): a host allocation failure right after it is the KV cache not fitting, as
# the CPU backend prints it ("DefaultCPUAllocator: can't allocate memory: you tried to allocate
# 5999951872 bytes"), which no restart fixes.
_KV_ALLOCATION_FRAME = re.compile(
    r", in _?(?:allocate_kv_cache\w*|initialize_kv_cache_tensors|init_cache_engine)\s*$"
)
# Lines between that frame and the exception line: source, carets, the allocator's frames.
_KV_ALLOCATION_CONTEXT_LINES = 8
_KV_ALLOCATION_FLAGS = ("kv_cache_memory_bytes", "VLLM_CPU_KVCACHE_SPACE", "gpu_memory_utilization")

# vLLM's request logger echoes user prompts; a prompt that says "CUDA out of memory" must not
# look like a failure.
_UNTRUSTED_ECHO_MARKER = "Received request "

# CSI (colours, cursor), OSC (titles, links) and two-byte escapes; and what a paste keeps of a
# colour code whose ESC it dropped (`[1;36m(VllmWorker pid=1)[0;0m`).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_ORPHAN_SGR = re.compile(r"\[(?:\d{1,3}(?:;\d{1,3})*)?m")

# What loggers, container runtimes and vLLM put before a message, any number of them in a row.
_PREFIX = re.compile(
    r"^(?:\s*(?:"
    # ISO-8601 / docker logs -t / Python logging (2025-07-10T08:59:40.123456789Z, ... 08:59:40,123)
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
    # CRI (containerd, kubelet) stream tag after the timestamp
    r"|(?:stdout|stderr) [FP](?= )"
    # syslog / journalctl: "Jul 10 08:59:40 host unit[123]:"
    r"|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \S+ [^\s:\[]+(?:\[\d+\])?:"
    # [2025-07-10 08:59:40], dmesg's [ 1234.567890], [Sun Mar 30 08:24:00 2025]
    r"|\[[^\]\n]{1,80}\]"
    # vLLM's process tag: (EngineCore_DP0 pid=1), (VllmWorker rank=0 pid=2), Ray's (raylet)
    r"|\([\w.:-]+(?: [\w.:=-]+)*\)"
    # vLLM's level and date: "ERROR 07-09 08:59:40 [core.py:708]" (older: "core.py:708]")
    r"|(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL) +\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?"
    r"(?: \[?[\w./-]+:\d+\])?"
    # a bare level, as Python's logging and most formatters put it after the time
    r"|(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b:?"
    # docker compose's service column: "vllm-1  | "
    r"|[\w.-]+ +\|"
    r"))+ ?"
)


@dataclass(frozen=True)
class OomMatch:
    kind: FailureKind
    evidence: str  # the matching line, cleaned and stripped, at most EVIDENCE_MAX_CHARS
    figures: OomFigures = field(default_factory=OomFigures)


def clean(text: str) -> str:
    """The text without colour codes."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "m" in text and ("[0" in text or "[1;" in text or "[3" in text):
        text = _ORPHAN_SGR.sub("", text)
    return text


def strip_prefixes(text: str) -> str:
    """The message without the timestamps, stream tags and logger columns before it."""
    found = _PREFIX.match(text)
    return text[found.end() :] if found else text


def _judge(text: str) -> OomMatch | None:
    """Classify one piece of text already cleaned: a segment, or two lines joined."""
    squashed = text.lower().replace(" ", "")
    candidates: list[Rule] = []
    for token in PREFILTER_TOKENS:
        if token in squashed:
            for anchor, rule in ANCHORED_BY_TOKEN[token]:
                if anchor in squashed:
                    candidates.append(rule)
    if not candidates and "killed" not in squashed:
        return None
    if _UNTRUSTED_ECHO_MARKER in text:
        return None
    for rule in sorted(candidates, key=RULE_ORDER.__getitem__):
        if rule.pattern.search(text):
            return _match(rule.kind, text)
    if "Killed" in text and BARE_KILLED.pattern.match(strip_prefixes(text)):
        return _match(BARE_KILLED.kind, text)
    return None


def _match(kind: FailureKind, text: str) -> OomMatch:
    return OomMatch(
        kind=kind,
        evidence=text.strip()[:EVIDENCE_MAX_CHARS],
        figures=figures_of(kind, text),
    )


def _segments(line: str) -> list[str]:
    # Progress bars redraw in place with "\r"; a message written after one is judged alone.
    return clean(line).split("\r")


def classify_line(line: str) -> OomMatch | None:
    """Classify one log line; None when it shows no memory failure.

    Pure and cheap enough to run on every line an engine writes. A line that holds carriage
    returns is judged piece by piece, and the evidence is the piece that matched.
    """
    for segment in _segments(line):
        match = _judge(segment)
        if match is not None:
            return match
    return None


class LogScanner:
    """Classifies a log line by line, each line also joined to the end of the one before.

    A terminal wraps a long message wherever its width ends (`... (4.26 GiB KV cach` /
    `e is needed, ...`), and the log follower hands an over-long line on in pieces; neither
    piece alone holds the message. The join is judged only when neither line matched alone, and
    the continuation's own prefixes (a container's timestamp) are dropped first.
    """

    def __init__(self) -> None:
        self._previous_tail = ""
        self._kv_allocation_lines = 0  # lines left in which a host OOM is the KV cache's

    def feed(self, line: str) -> OomMatch | None:
        match = self._feed(line)
        if "kv_cache" in line and _KV_ALLOCATION_FRAME.search(line):
            self._kv_allocation_lines = _KV_ALLOCATION_CONTEXT_LINES
        elif self._kv_allocation_lines:
            self._kv_allocation_lines -= 1
            if match is not None and match.kind is FailureKind.HOST_OOM:
                match = OomMatch(
                    kind=FailureKind.KV_CACHE_INSUFFICIENT,
                    evidence=match.evidence,
                    figures=replace(match.figures, flags=_KV_ALLOCATION_FLAGS),
                )
        return match

    def _feed(self, line: str) -> OomMatch | None:
        segments = _segments(line)
        match: OomMatch | None = None
        for segment in segments:
            match = _judge(segment)
            if match is not None:
                break
        if match is None and self._previous_tail:
            head = strip_prefixes(segments[0])
            if head.strip() and _judge(self._previous_tail[-_WRAP_CHARS:] + head[:_WRAP_CHARS]):
                # Judged again with more of both lines, for the evidence and the figures.
                match = _judge(self._previous_tail + head[:_JOIN_CHARS])
        self._previous_tail = "" if match is not None else segments[-1][-_JOIN_CHARS:]
        return match


def scan_lines(lines: Iterable[str]) -> tuple[int, OomMatch] | None:
    """The first memory failure in `lines` and its 1-based line number, or None."""
    scanner = LogScanner()
    for line_number, line in enumerate(lines, start=1):
        match = scanner.feed(line)
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
    scanner = LogScanner()
    with path.open(encoding="utf-8", errors="replace", newline="\n") as log_file:
        while piece := log_file.readline(_READ_CHUNK_CHARS):
            match = scanner.feed(piece.rstrip("\r\n"))
            if match is not None:
                return _result(path, (line_number, match))
            if piece.endswith("\n"):
                line_number += 1
    return _result(path, None)
