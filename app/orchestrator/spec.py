"""ModelSpec: what an operator asks the orchestrator to run, validated field by field.

Every rule here guards something downstream: the id becomes a file and a systemd unit name, the
argv goes to exec (never a shell), and the env reaches the engine's loader. A rejection always
names the field, so an operator's 422 says what to fix.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.orchestrator.lora import VLLM_LORA_RANKS

SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# systemd's MemoryMax=: bytes with an optional K/M/G/T/P/E suffix, a percentage, or "infinity".
_MEMORY_MAX = re.compile(r"^(infinity|[0-9]+(\.[0-9]+)?[KMGTPE]?|[0-9]+(\.[0-9]+)?%)$")
# systemd's CPUQuota=: a percentage, may exceed 100% on several cores.
_CPU_QUOTA = re.compile(r"^[1-9][0-9]{0,5}%$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Flags whose values the orchestrator owns: placement, identity and the adapters it attaches.
RESERVED_ENGINE_FLAGS = frozenset(
    {
        "--host",
        "--port",
        "--model",
        "--served-model-name",
        "--gpu-memory-utilization",
        "--dtype",
        "--tensor-parallel-size",
        "-tp",
        "--max-model-len",
        "--enable-lora",
        "--lora-modules",
        "--max-lora-rank",
        "--max-loras",
        "--uds",
        "--api-key",
        # A config file may set any of the flags above.
        "--config",
    }
)
# vLLM flags that multiply the GPUs one engine takes (vllm/engine/arg_utils.py, ParallelConfig):
# world size = tensor x pipeline x prefill-context parallel, per data-parallel replica. Placement
# reserves tensor_parallel_size GPUs and no more, so an engine given one of these would take GPUs
# nobody reserved. The data-parallel family is refused whole: its other flags (rank, address,
# backend, load balancing) mean nothing without a data-parallel size, and vLLM's short forms
# (-dpn, -dpb, ...) all begin with -dp. Decode context parallelism (-dcp) and expert parallelism
# (-ep) run on the tensor-parallel GPUs and are allowed.
GPU_COUNT_FLAGS = frozenset(
    {
        "--pipeline-parallel-size",
        "-pp",
        "--prefill-context-parallel-size",
        "-pcp",
        "--data-parallel-size",
        "-dp",
        "--data-parallel-size-local",
        "-dpl",
        "--data-parallel-rank",
        "-dpn",
        "--data-parallel-start-rank",
        "-dpr",
        "--data-parallel-address",
        "-dpa",
        "--data-parallel-rpc-port",
        "-dpp",
        "--data-parallel-backend",
        "-dpb",
        "--data-parallel-hybrid-lb",
        "-dph",
        "--data-parallel-external-lb",
        "-dpe",
        # Elastic expert parallelism grows the data-parallel size while the engine runs.
        "--enable-elastic-ep",
        "--elastic-ep-max-dp-size",
    }
)
_ENGINE_FLAGS = RESERVED_ENGINE_FLAGS | GPU_COUNT_FLAGS
_LONG_ENGINE_FLAGS = sorted(flag for flag in _ENGINE_FLAGS if flag.startswith("--"))
_SHORT_ENGINE_FLAGS = sorted(flag for flag in _ENGINE_FLAGS if not flag.startswith("--"))
_MULTI_GPU_HINT = (
    "it multiplies the GPUs the engine takes beyond the ones placement reserves; use "
    "tensor_parallel_size, the multi-GPU setting that placement counts"
)

# Variables that decide which GPUs, and how many, an engine takes: placement sets the first two
# itself (engine_command.py), and vLLM reads its data-parallel size from VLLM_DP_SIZE.
GPU_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"})
GPU_ENV_PREFIXES = ("VLLM_DP_",)
# Variables the orchestrator sets itself, and loader hooks that would run foreign code.
RESERVED_ENV_NAMES = GPU_ENV_NAMES | frozenset(
    {
        "VLLM_ADAPTER_PATHS",
        "GPU_ORCH_LAUNCH_TOKEN",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PYTHONUSERBASE",
        "BASH_ENV",
        "ENV",
        "PATH",
        "GCONV_PATH",
    }
)
RESERVED_ENV_PREFIXES = ("LD_", "DYLD_", *GPU_ENV_PREFIXES)


def owned_flag(token: str) -> str | None:
    """The refused engine flag (RESERVED_ENGINE_FLAGS, GPU_COUNT_FLAGS) that an argv token would
    set, as vLLM's parser reads it: the part before '=', underscores in a long flag's name read as
    dashes (`--gpu_memory_utilization`), a prefix read as the whole flag (argparse's
    abbreviations: `--hos`, and for short flags `-t` or `-pc`), and a short flag glued to its
    value (`-tp2`). An ambiguous prefix is refused too: vLLM would refuse it anyway."""
    if token.startswith("--"):
        name = token.split("=", 1)[0]
        name = "--" + name[2:].split(".", 1)[0].replace("_", "-")
        if len(name) <= 2:
            return None
        if name in _ENGINE_FLAGS:
            return name
        return next((flag for flag in _LONG_ENGINE_FLAGS if flag.startswith(name)), None)
    if token.startswith("-") and len(token) > 1:
        name = token.split("=", 1)[0]
        if name in _ENGINE_FLAGS:
            return name
        abbreviated = next((flag for flag in _SHORT_ENGINE_FLAGS if flag.startswith(name)), None)
        if abbreviated is not None:
            return abbreviated
        # Glued to a value: the longest flag that begins the token (`-dpl2` is -dpl, not -dp).
        glued = [flag for flag in _SHORT_ENGINE_FLAGS if name.startswith(flag)]
        return max(glued, key=len, default=None)
    return None


class Dtype(StrEnum):
    AUTO = "auto"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


class RestartPolicy(BaseModel):
    """Bounded exponential backoff.

    Defaults follow kubelet's CrashLoopBackOff shape (doubling, capped, reset after a stable run)
    scaled for engines that take tens of seconds to load: 5 restarts at 10, 20, 40, 80, 160 s,
    then degraded; a run of 10 minutes without failure resets the count.
    """

    model_config = ConfigDict(extra="forbid")

    max_restarts: int = Field(default=5, ge=0, le=100)
    backoff_initial_s: float = Field(default=10.0, ge=0.0, le=3600.0, allow_inf_nan=False)
    backoff_factor: float = Field(default=2.0, ge=1.0, le=10.0, allow_inf_nan=False)
    backoff_max_s: float = Field(default=300.0, ge=0.0, le=86400.0, allow_inf_nan=False)
    stable_after_s: float = Field(default=600.0, ge=0.0, le=86400.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> RestartPolicy:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


def _check_relative_or_absolute_path(value: str, field: str) -> str:
    if not value or "\x00" in value or "\n" in value:
        raise ValueError(f"{field} must be a non-empty path, no control characters")
    if ".." in PurePosixPath(value).parts:
        raise ValueError(f"{field} must not contain '..'")
    return value


class ModelSpecBase(BaseModel):
    """The fields an operator may set; `id` lives on ModelSpec (it never changes)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    model: str = Field(min_length=1, max_length=512, examples=["mistral-7b-v0.3"])
    dtype: Dtype = Dtype.AUTO
    gpu_memory_util: float = Field(default=0.9, gt=0.0, le=1.0, allow_inf_nan=False)
    service_unit: str | None = Field(default=None, max_length=128)
    memory_max: str | None = Field(default=None, examples=["48G"])
    cpu_quota: str | None = Field(default=None, examples=["400%"])
    adapter_paths: list[str] = Field(default_factory=list, max_length=64)
    adapter_names: dict[str, str] = Field(
        default_factory=dict,
        description="vLLM name of an adapter, keyed by its path; default the directory's name.",
    )
    port: int | None = Field(default=None, ge=1024, le=65535)
    max_model_len: int | None = Field(default=None, ge=1, le=10_000_000)
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256
    )
    env: dict[str, Annotated[str, Field(max_length=65536)]] = Field(default_factory=dict)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    start_timeout_s: float | None = Field(default=None, gt=0.0, le=86400.0, allow_inf_nan=False)
    on_demand: bool = Field(
        default=True,
        description="A gateway request for this model (or its adapter) starts it when stopped.",
    )
    max_concurrency: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Requests the gateway sends the engine at once; more wait in the queue. "
        "0: unlimited.",
    )

    idle_timeout_s: float | None = Field(
        default=None,
        gt=0.0,
        le=30 * 86400.0,
        allow_inf_nan=False,
        description="Stop (or, with sleep_level, sleep) the engine after this long with no "
        "request. Null: the IDLE_TIMEOUT_S setting (unset: never).",
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="A start that lacks room may evict idle engines of lower or equal priority.",
    )
    sleep_level: int | None = Field(
        default=None,
        ge=1,
        le=2,
        description="vLLM sleep mode for idle unload and eviction: 1 keeps the weights in host "
        "memory (wakes in seconds), 2 drops them (reloads them on wake). Null: stop instead.",
    )
    node: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,  # a Kubernetes node name (a DNS subdomain)
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run only on this node (its GPU_ORCH_NODE_NAME). Null: a start places it on "
        "a node with headroom.",
    )
    failover: bool = Field(
        default=True,
        description="When its node stops heartbeating, start it on another node with headroom.",
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="LoRA slots the engine keeps (vLLM's --max-loras); setting it enables LoRA "
        "even with no adapter yet. Default: the declared adapters, at least 4.",
    )
    max_lora_rank: int | None = Field(
        default=None,
        description="Largest adapter rank the engine takes (vLLM's --max-lora-rank, one of "
        "1, 8, 16, 32, 64, 128, 256, 320, 512). Default: the widest declared adapter, at least 64.",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _lora_rank(cls, value: int | None) -> int | None:
        if value is not None and value not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of vLLM's choices {list(VLLM_LORA_RANKS)}: {value}"
            )
        return value

    @field_validator("model")
    @classmethod
    def _model_no_control(cls, value: str) -> str:
        if any(ch in value for ch in "\x00\n\r") or value.startswith("-"):
            raise ValueError("model must be a name or path, not a flag or control characters")
        return value

    @field_validator("service_unit")
    @classmethod
    def _unit_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9:_.\\-]{1,120}\.service", value):
            raise ValueError("service_unit must be a systemd unit name ending in .service")
        return value

    @field_validator("memory_max")
    @classmethod
    def _memory_max(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY_MAX.fullmatch(value):
            raise ValueError(
                "memory_max must use systemd's MemoryMax= syntax (48G, 512M, infinity)"
            )
        return value

    @field_validator("cpu_quota")
    @classmethod
    def _cpu_quota(cls, value: str | None) -> str | None:
        if value is not None and not _CPU_QUOTA.fullmatch(value):
            raise ValueError("cpu_quota must use systemd's CPUQuota= syntax (80%, 400%)")
        return value

    @field_validator("adapter_paths")
    @classmethod
    def _adapter_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            _check_relative_or_absolute_path(path, "adapter_paths")
            if ":" in path:
                raise ValueError("adapter_paths entries must not contain ':' (VLLM_ADAPTER_PATHS)")
        if len(set(value)) != len(value):
            raise ValueError("adapter_paths must not repeat a path")
        return value

    @field_validator("adapter_names")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            if not _ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"adapter_names: {name!r} is not a valid adapter name")
        if len(set(value.values())) != len(value):
            raise ValueError("adapter_names must not give two adapters the same name")
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, value: list[str]) -> list[str]:
        for token in value:
            if "\x00" in token:
                raise ValueError("extra_args must not contain NUL characters")
            flag = owned_flag(token)
            if flag in GPU_COUNT_FLAGS:
                raise ValueError(
                    f"extra_args must not set {flag} (given as {token!r}): {_MULTI_GPU_HINT}"
                )
            if flag is not None:
                raise ValueError(
                    f"extra_args must not set {flag} (given as {token!r}): the orchestrator owns it"
                )
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env: {name!r} is not a valid variable name")
            upper = name.upper()
            if upper in GPU_ENV_NAMES or upper.startswith(GPU_ENV_PREFIXES):
                raise ValueError(
                    f"env must not set {name}: the orchestrator pins the engine to the GPUs that "
                    "placement chose (CUDA_VISIBLE_DEVICES in PCI bus order); use "
                    "tensor_parallel_size for more GPUs"
                )
            if upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"env must not set {name}: reserved or a loader hook")
            if "\x00" in item:
                raise ValueError(f"env: {name} must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _adapter_names_refer_to_paths(self) -> ModelSpecBase:
        unknown = set(self.adapter_names) - set(self.adapter_paths)
        if unknown:
            raise ValueError(f"adapter_names keys must be adapter_paths entries: {sorted(unknown)}")
        return self


class ModelSpec(ModelSpecBase):
    """A registered model: the operator's fields plus its immutable id."""

    id: str = Field(pattern=SLUG_PATTERN, examples=["mistral-7b"])

    @property
    def unit_name(self) -> str:
        return self.service_unit or f"vllm-{self.id}.service"

    def adapter_name(self, path: str) -> str:
        return self.adapter_names.get(path) or PurePosixPath(path).name


def spec_fields(spec: ModelSpec) -> dict[str, Any]:
    """The spec as plain JSON-able data, for storage and responses."""
    return spec.model_dump(mode="json")
