"""The engine's argv and environment, built from a spec: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.orchestrator.lora import Adapter, LoraLimits, lora_flags, lora_limits
from app.orchestrator.spec import ModelSpec

# The engine starts from a clean environment plus these, never the orchestrator's whole one
# (its API token and settings must not leak into engines). They come from the operator's own
# environment (the unit file, the container image), not from API input: the image's
# LD_LIBRARY_PATH is how vLLM finds CUDA there, while a spec's env may not set it.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "VLLM_CACHE_ROOT",
)


# CUDA numbers devices fastest first unless told otherwise; NVML, which placement reads, numbers
# them in PCI bus order. On a node with mixed GPUs the two differ, and CUDA_VISIBLE_DEVICES=0
# would be another GPU than the one the headroom check chose. The orchestrator therefore sets the
# order itself, after every other source of environment. (GPU UUIDs in CUDA_VISIBLE_DEVICES would
# need no order, but vLLM reads the entries with int(): docs/design.md, "GPU numbering".)
CUDA_DEVICE_ORDER = "PCI_BUS_ID"


# The orchestrator probes every engine's GET /health (readiness, then the health check every
# few seconds). vLLM writes an access line for each probe, and every line wakes the log watcher
# and is read and classified: most of the orchestrator's idle CPU with 100 engines
# (docs/benchmarks.md). vLLM's flag (vLLM 0.16 and later, its PR 30011) leaves out the access
# lines of exactly these paths and keeps every other request's.
HEALTH_PROBE_PATH = "/health"
QUIET_ENDPOINTS_FLAG = "--disable-access-log-for-endpoints"
_NO_ACCESS_LOG_FLAG = "--disable-uvicorn-access-log"
# The shortest prefix argparse reads as QUIET_ENDPOINTS_FLAG (`--disable-a` is ambiguous).
_QUIET_ENDPOINTS_PREFIX = "--disable-acc"


@dataclass(frozen=True)
class EngineCommand:
    argv: list[str]
    env: dict[str, str]


def build_argv(
    spec: ModelSpec,
    *,
    base_command: Sequence[str],
    model_path: str,
    host: str,
    port: int,
    adapters: Sequence[Adapter],
) -> list[str]:
    argv = [*base_command, model_path]
    argv += ["--host", host, "--port", str(port), "--served-model-name", spec.id]
    argv += ["--dtype", spec.dtype.value]
    argv += ["--gpu-memory-utilization", repr(spec.gpu_memory_util)]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    argv += quiet_health_probe_flags(spec.extra_args)
    argv += lora_flags(list(adapters), engine_lora_limits(spec, adapters))
    if spec.sleep_level is not None:
        argv += ["--enable-sleep-mode"]
    return argv + with_health_path_quiet(spec.extra_args)


def _flag_name(token: str) -> str:
    """A long flag as vLLM's parser reads it: before any `=`, underscores read as dashes."""
    name = token.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def _is_quiet_endpoints_flag(token: str) -> bool:
    name = _flag_name(token)
    return name.startswith(_QUIET_ENDPOINTS_PREFIX) and QUIET_ENDPOINTS_FLAG.startswith(name)


def _with_health_path(paths: str) -> str:
    listed = [path.strip() for path in paths.split(",") if path.strip()]
    return ",".join(listed if HEALTH_PROBE_PATH in listed else [*listed, HEALTH_PROBE_PATH])


def quiet_health_probe_flags(extra_args: Sequence[str]) -> list[str]:
    """The flag that leaves the orchestrator's probes out of vLLM's access log, unless the
    spec's extra_args already see to it: `--disable-access-log-for-endpoints` of their own (into
    which `with_health_path_quiet` merges /health), or `--disable-uvicorn-access-log`, which
    turns the access log off altogether (and is what a vLLM older than the flag, which refuses
    it, can be given instead)."""
    if any(
        _flag_name(token) == _NO_ACCESS_LOG_FLAG or _is_quiet_endpoints_flag(token)
        for token in extra_args
    ):
        return []
    return [QUIET_ENDPOINTS_FLAG, HEALTH_PROBE_PATH]


def with_health_path_quiet(extra_args: Sequence[str]) -> list[str]:
    """The spec's extra_args with /health merged into its own `--disable-access-log-for-endpoints`
    (`/metrics` -> `/metrics,/health`): vLLM keeps only the last value of a repeated flag, so a
    flag of ours beside it would drop one or the other."""
    args = list(extra_args)
    for index, token in enumerate(args):
        if not _is_quiet_endpoints_flag(token):
            continue
        if "=" in token:
            name, paths = token.split("=", 1)
            args[index] = f"{name}={_with_health_path(paths)}"
        elif index + 1 < len(args):
            args[index + 1] = _with_health_path(args[index + 1])
    return args


def engine_lora_limits(spec: ModelSpec, adapters: Sequence[Adapter]) -> LoraLimits | None:
    """The LoRA limits an engine of `spec` is launched with (None: no LoRA at all)."""
    return lora_limits(list(adapters), max_loras=spec.max_loras, max_lora_rank=spec.max_lora_rank)


def build_env(
    spec: ModelSpec,
    *,
    parent_env: Mapping[str, str],
    engine_env: Mapping[str, str],
    gpu_ids: Sequence[int],
    adapters: Sequence[Adapter],
    launch_token: str,
) -> dict[str, str]:
    """A clean base, the operator's engine defaults, the spec's env, then what we own: what we
    own is set last, so neither the operator's ENGINE_ENV nor a spec can move an engine off the
    GPUs that placement chose. `gpu_ids` are NVML indices."""
    env = {name: parent_env[name] for name in INHERITED_ENV if name in parent_env}
    env.update(engine_env)
    env.update(spec.env)
    env["VLLM_ADAPTER_PATHS"] = ":".join(str(adapter.path) for adapter in adapters)
    if spec.sleep_level is not None:
        # vLLM serves /sleep, /wake_up and /collective_rpc only in its development mode.
        env["VLLM_SERVER_DEV_MODE"] = "1"
    if engine_lora_limits(spec, adapters) is not None:
        # Adapters are added and removed on the running engine (POST /v1/load_lora_adapter).
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env["CUDA_DEVICE_ORDER"] = CUDA_DEVICE_ORDER  # NVML index i is CUDA device i
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpu_ids)
    # Lets a restarted orchestrator find an engine it spawned but had not yet recorded.
    env["GPU_ORCH_LAUNCH_TOKEN"] = launch_token
    return env


def build_engine_command(
    spec: ModelSpec,
    *,
    base_command: Sequence[str],
    model_path: str,
    host: str,
    port: int,
    adapters: Sequence[Adapter],
    parent_env: Mapping[str, str],
    engine_env: Mapping[str, str],
    gpu_ids: Sequence[int],
    launch_token: str,
) -> EngineCommand:
    return EngineCommand(
        argv=build_argv(
            spec,
            base_command=base_command,
            model_path=model_path,
            host=host,
            port=port,
            adapters=adapters,
        ),
        env=build_env(
            spec,
            parent_env=parent_env,
            engine_env=engine_env,
            gpu_ids=gpu_ids,
            adapters=adapters,
            launch_token=launch_token,
        ),
    )
