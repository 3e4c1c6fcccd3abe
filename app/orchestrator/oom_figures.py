"""The figures a memory failure message states: what was needed, what was available, the flags.

An operator acting on `kv_cache_insufficient` needs the numbers (2.00 GiB of KV cache needed,
1.00 GiB available, max_model_len 4096 of which about 2048 would fit) and the setting to change;
the messages vLLM prints carry them, so they are read from the message rather than guessed.
Quantities keep the unit the message used ("2.00 GiB", "29000 tokens", "14.67GB").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.orchestrator.failures import FailureKind
from app.orchestrator.oom_rules import phrase

# vLLM's flags as its messages name them -> the spec setting that carries each.
SPEC_SETTING_FOR_FLAG: dict[str, str] = {
    "gpu_memory_utilization": "gpu_memory_util",
    "max_model_len": "max_model_len",
    "kv_cache_memory_bytes": "extra_args --kv-cache-memory-bytes",
    "VLLM_CPU_KVCACHE_SPACE": "env VLLM_CPU_KVCACHE_SPACE",
    "max_num_seqs": "extra_args --max-num-seqs",
    "max_num_batched_tokens": "extra_args --max-num-batched-tokens",
    "enforce_eager": "extra_args --enforce-eager",
}
# What to change when the message names nothing (e.g. only the negative budget was logged).
_DEFAULT_FLAGS: dict[FailureKind, tuple[str, ...]] = {
    FailureKind.KV_CACHE_INSUFFICIENT: ("gpu_memory_utilization", "max_model_len"),
    FailureKind.GPU_OOM: ("gpu_memory_utilization", "max_num_seqs", "max_model_len"),
}


@dataclass(frozen=True)
class OomFigures:
    needed: str | None = None  # what was asked for: one max-length request's KV cache, a block
    available: str | None = None  # what there was for it (may be negative: a budget overspent)
    total: str | None = None  # the device's or node's whole memory
    max_model_len: int | None = None
    estimated_max_model_len: int | None = None  # what vLLM says would fit instead
    flags: tuple[str, ...] = ()  # vLLM's flags that the message (or the kind) says to change

    def as_dict(self) -> dict[str, object]:
        """The figures that are known, for the status and the event log."""
        values: dict[str, object] = {
            "needed": self.needed,
            "available": self.available,
            "total": self.total,
            "max_model_len": self.max_model_len,
            "estimated_max_model_len": self.estimated_max_model_len,
            "flags": list(self.flags),
            "settings": [SPEC_SETTING_FOR_FLAG[flag] for flag in self.flags],
        }
        return {key: value for key, value in values.items() if value not in (None, [])}

    def summary(self) -> str:
        """One sentence for an operator: `needed 2.00 GiB, available 1.00 GiB (max_model_len
        4096, about 2048 fits); change gpu_memory_util or max_model_len`."""
        parts = []
        if self.needed is not None:
            parts.append(f"needed {self.needed}")
        if self.available is not None:
            parts.append(f"available {self.available}")
        if self.total is not None:
            parts.append(f"of {self.total} in all")
        text = ", ".join(parts)
        if self.max_model_len is not None:
            fits = ""
            if self.estimated_max_model_len is not None:
                fits = f", about {self.estimated_max_model_len} fits"
            text += f" (max_model_len {self.max_model_len}{fits})"
        if self.flags:
            settings = " or ".join(SPEC_SETTING_FOR_FLAG[flag] for flag in self.flags)
            text += ("; " if text else "") + f"change {settings}"
        return text.strip()


_QUANTITY = r"-?\d+(?:\.\d+)?"
_SIZE = rf"{_QUANTITY} ?[KMGTP]?i?B"


def _figure(pattern: str) -> re.Pattern[str]:
    return re.compile(phrase(pattern), re.IGNORECASE)


_FIGURE_PATTERNS: dict[FailureKind, tuple[re.Pattern[str], ...]] = {
    FailureKind.KV_CACHE_INSUFFICIENT: (
        # vLLM v1 kv_cache_utils.py _check_enough_kv_cache_memory
        _figure(
            rf"max seq len \((?P<max_model_len>\d+)\), \((?P<needed>{_QUANTITY} GiB) KV cache is "
            rf"needed, which is larger than the available KV cache memory "
            rf"\((?P<available>{_QUANTITY} GiB)\)"
        ),
        # vLLM v0 raise_if_cache_size_invalid (in tokens)
        _figure(
            r"max seq len \((?P<max_model_len>(?P<needed>\d+))\) is larger than the maximum "
            r"number of tokens that can be stored in KV cache \((?P<available>\d+)\)"
        ),
        # vLLM CPU backend cpu_worker.py determine_available_memory
        _figure(
            rf"Available memory on node \d+ \((?P<available>{_QUANTITY})/(?P<total>{_QUANTITY}) "
            rf"GiB\) on kv cache allocation is less than requested memory for kv "
            rf"\((?P<needed>{_QUANTITY})(?:/{_QUANTITY})? GiB\)"
        ),
        _figure(rf"Available KV cache memory: (?P<available>{_QUANTITY} GiB)"),
        _figure(rf"reserved for KV Cache is (?P<available>{_QUANTITY} ?GiB)"),
    ),
    FailureKind.GPU_OOM: (
        # PyTorch CUDACachingAllocator, torch >= 2.1 and older
        _figure(
            rf"Tried to allocate (?P<needed>{_SIZE})\. GPU \d+ has a total capacity of "
            rf"(?P<total>{_SIZE}) of which (?P<available>{_SIZE}) is free"
        ),
        _figure(
            rf"Tried to allocate (?P<needed>{_SIZE}) \(GPU \d+; (?P<total>{_SIZE}) total "
            rf"capacity;[^)]*?(?P<available>{_SIZE}) free"
        ),
        _figure(rf"Tried to allocate (?P<needed>{_SIZE})"),
        # vLLM v1 worker/utils.py request_memory
        _figure(
            rf"Free memory on device[^(]*\((?P<available>{_QUANTITY})/(?P<total>{_QUANTITY}) "
            rf"GiB\) on startup is less than desired GPU memory utilization \({_QUANTITY}, "
            rf"(?P<needed>{_QUANTITY} GiB)\)"
        ),
    ),
    FailureKind.HOST_OOM: (
        # vLLM CPU backend cpu_worker.py start-up check
        _figure(
            rf"Available memory on node \d+ \((?P<available>{_QUANTITY})/(?P<total>{_QUANTITY}) "
            rf"GiB\) on startup is less than desired CPU memory utilization \({_QUANTITY}, "
            rf"(?P<needed>{_QUANTITY} GiB)\)"
        ),
        # Ray's memory monitor: "was 12.49GB / 13.15GB (0.950003), which exceeds ..."
        _figure(rf"was (?P<needed>{_SIZE}) / (?P<total>{_SIZE}) \({_QUANTITY}\), which exceeds"),
        # PyTorch alloc_cpu.cpp
        _figure(r"you tried to allocate (?P<needed>\d+ bytes)"),
        # Linux oom_kill.c: the victim's resident memory
        _figure(
            r"Killed process \d+ \([^)]*\) total-vm:(?P<total>\d+kB), anon-rss:(?P<needed>\d+kB)"
        ),
    ),
}

_FLAG = re.compile(
    r"(?:--)?(gpu[-_]memory[-_]utilization|max[-_]model[-_]len|kv[-_]cache[-_]memory[-_]bytes"
    r"|max[-_]num[-_]seqs|max[-_]num[-_]batched[-_]tokens|enforce[-_]eager|VLLM_CPU_KVCACHE_SPACE)"
)
_GIB_UNIT = " GiB"


def _flags(kind: FailureKind, text: str) -> tuple[str, ...]:
    named: list[str] = []
    for found in _FLAG.finditer(text):
        flag = found.group(1)
        flag = flag if flag.isupper() else flag.replace("-", "_")
        if flag not in named:
            named.append(flag)
    return tuple(named) or _DEFAULT_FLAGS.get(kind, ())


def _with_unit(value: str | None, text: str) -> str | None:
    """`7.11` from a `(7.11/8.71 GiB)` pair gets the pair's unit."""
    if value is None or not re.fullmatch(_QUANTITY, value):
        return value
    return value + _GIB_UNIT if _GIB_UNIT.strip() in text else value


def figures_of(kind: FailureKind, text: str) -> OomFigures:
    """The figures `text` (a matched message) states for a failure of `kind`."""
    flags = _flags(kind, text) if kind is not FailureKind.HOST_OOM else ()
    for pattern in _FIGURE_PATTERNS.get(kind, ()):
        found = pattern.search(text)
        if found is None:
            continue
        groups = found.groupdict()
        needed, available = groups.get("needed"), groups.get("available")
        if kind is FailureKind.KV_CACHE_INSUFFICIENT and "tokens that can be stored" in text:
            needed, available = f"{needed} tokens", f"{available} tokens"
        estimated = re.search(r"estimated maximum model length is (\d+)", text)
        max_model_len = groups.get("max_model_len")
        return OomFigures(
            needed=_with_unit(needed, text),
            available=_with_unit(available, text),
            total=_with_unit(groups.get("total"), text),
            max_model_len=int(max_model_len) if max_model_len else None,
            estimated_max_model_len=int(estimated.group(1)) if estimated else None,
            flags=flags,
        )
    return OomFigures(flags=flags)
