"""Service settings from the environment (prefix GPU_ORCH_), built by a factory and injected."""

from __future__ import annotations

import shlex
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class GpuBackend(StrEnum):
    NVML = "nvml"
    SIMULATED = "simulated"


class LauncherChoice(StrEnum):
    AUTO = "auto"
    SYSTEMD = "systemd"
    SUBPROCESS = "subprocess"


class Placement(StrEnum):
    SPREAD = "spread"
    BINPACK = "binpack"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPU_ORCH_", extra="ignore")

    state_dir: Path = Path("var")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default a SQLite file in state_dir."
    )
    log_dir: Path | None = Field(default=None, description="Engine logs; default state_dir/logs.")
    config_dir: Path = Path("config")
    model_store_root: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("GPU_ORCH_MODEL_STORE_ROOT", "MODEL_STORE_ROOT"),
    )
    strict_adapters: bool = False

    gpu_backend: GpuBackend = GpuBackend.NVML
    simulated_gpus: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [81920])
    headroom_margin_mib: int = Field(default=1024, ge=0)
    monitor_interval_s: float = Field(default=5.0, gt=0)
    low_memory_threshold_mib: int | None = Field(default=2048, ge=0)
    low_memory_threshold_pct: float | None = Field(default=None, ge=0, le=100)
    low_memory_samples: int = Field(default=3, ge=1)
    alert_webhook_url: str | None = None
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0)

    vllm_command: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["vllm", "serve"])
    engine_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for every engine (JSON object)."
    )
    launcher: LauncherChoice = LauncherChoice.AUTO
    engine_host: str = "127.0.0.1"
    port_range_start: int = Field(default=8100, ge=1024, le=65535)
    port_range_end: int = Field(default=8999, ge=1024, le=65535)
    start_timeout_s: float = Field(default=900.0, gt=0)
    # The idle timeout of specs that leave theirs unset (None: never unload for idleness).
    idle_timeout_s: float | None = Field(default=None, gt=0)
    stop_grace_s: float = Field(default=30.0, gt=0)
    readiness_interval_min_s: float = Field(default=0.01, gt=0)
    readiness_interval_max_s: float = Field(default=0.05, gt=0)
    health_interval_s: float = Field(default=10.0, gt=0)
    health_failures: int = Field(default=3, ge=1)
    health_timeout_s: float = Field(default=5.0, gt=0)
    stop_engines_on_shutdown: bool = False

    # One orchestrator per node; nodes share a PostgreSQL database (docs/cluster.md).
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=253,  # a Kubernetes node name (a DNS subdomain)
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This node's name in the cluster; default the hostname.",
    )
    node_url: str | None = Field(
        default=None,
        description="How other nodes reach this node's API, e.g. http://10.0.0.7:8000.",
    )
    node_timeout_s: float = Field(
        default=30.0,
        ge=0.5,
        le=3600.0,
        description="A node silent this long loses its models' leases (failover).",
    )
    placement: Placement = Field(
        default=Placement.SPREAD,
        description="Where a start goes: spread (most free memory) or binpack (least that fits).",
    )

    api_token: str | None = None
    # Tokens accepted on the gateway's /v1/* only: agents call models, never stop them.
    inference_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    gateway_max_queue: int = Field(default=256, ge=0)
    metrics_public: bool = False
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    @field_validator("vllm_command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        if isinstance(value, str):
            return shlex.split(value)
        return value

    @field_validator("simulated_gpus", mode="before")
    @classmethod
    def _split_gpus(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(item) for item in value.split(",") if item.strip()]
        return value

    @field_validator("inference_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_token")
    @classmethod
    def _empty_token_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'gpu-orchestrator.db'}"

    @property
    def resolved_log_dir(self) -> Path:
        return self.log_dir or self.state_dir / "logs"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests pass theirs here)."""
    return Settings(**overrides)  # type: ignore[arg-type]
