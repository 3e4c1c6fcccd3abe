"""Request and response schemas, named by role (Create / Update / Public)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.orchestrator.activity import Activity
from app.orchestrator.clock import iso_ms
from app.orchestrator.spec import (
    SLUG_PATTERN,
    Dtype,
    ModelSpec,
    ModelSpecBase,
    RestartPolicy,
)
from app.store.tables import EventRow, StatusRow

MODEL_EXAMPLE: dict[str, Any] = {
    "id": "mistral-7b",
    "model": "mistralai/Mistral-7B-Instruct-v0.3",
    "dtype": "bfloat16",
    "gpu_memory_util": 0.75,
    "max_model_len": 4096,
    "memory_max": "48G",
    "cpu_quota": "80%",
    "adapter_paths": ["synthesizer/adapters/mistral_synth_v1"],
    "adapter_names": {"synthesizer/adapters/mistral_synth_v1": "mistral_synth_v1"},
    "restart_policy": {"max_restarts": 5, "backoff_initial_s": 10, "backoff_factor": 2},
}


class ModelCreate(ModelSpec):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [MODEL_EXAMPLE]})


class ModelReplace(ModelSpecBase):
    """PUT body: every field of the spec but the id (taken from the path)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{k: v for k, v in MODEL_EXAMPLE.items() if k != "id"}]},
    )


class ModelPatch(BaseModel):
    """PATCH body: only the fields to change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"gpu_memory_util": 0.8, "max_model_len": 8192}]},
    )

    model: str | None = Field(default=None, min_length=1, max_length=512)
    dtype: Dtype | None = None
    gpu_memory_util: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    service_unit: str | None = None
    memory_max: str | None = None
    cpu_quota: str | None = None
    adapter_paths: list[str] | None = Field(default=None, max_length=64)
    adapter_names: dict[str, str] | None = None
    port: int | None = Field(default=None, ge=1024, le=65535)
    max_model_len: int | None = Field(default=None, ge=1, le=10_000_000)
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=64)
    extra_args: list[str] | None = Field(default=None, max_length=256)
    env: dict[str, str] | None = None
    restart_policy: RestartPolicy | None = None
    start_timeout_s: float | None = Field(default=None, gt=0.0, le=86400.0, allow_inf_nan=False)
    on_demand: bool | None = None
    max_concurrency: int | None = Field(default=None, ge=0, le=100_000)
    max_loras: int | None = Field(default=None, ge=1, le=256)
    idle_timeout_s: float | None = Field(default=None, gt=0.0, le=30 * 86400.0, allow_inf_nan=False)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    sleep_level: int | None = Field(default=None, ge=1, le=2)
    max_lora_rank: int | None = None


class ErrorDetail(BaseModel):
    """An error's stable `code`, a sentence for people, and the figures behind it."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorPublic(BaseModel):
    detail: ErrorDetail


class ValidationIssue(BaseModel):
    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class UnprocessablePublic(BaseModel):
    """422: the field issues of a request (FastAPI's list), or, for a start, the spec's adapters
    that cannot be read (`{code: adapter_invalid, message}`)."""

    detail: list[ValidationIssue] | ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "The body is not decodable (not UTF-8).",
    401: "Missing or wrong bearer token (`WWW-Authenticate: Bearer`).",
    404: "No model with this id is registered.",
    409: "Refused in the current state: already exists, running, or no GPU headroom.",
    413: "The request body exceeds the limit (`GPU_ORCH_MAX_BODY_BYTES`).",
    422: "A field is invalid, or (on start) an adapter of the spec cannot be read.",
    503: "The engine could not be launched.",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the `{"detail": {code, message}}`
    body, so clients (and schema-driven fuzzers) know every status a route may answer."""
    return {
        code: {
            "model": UnprocessablePublic if code == 422 else ErrorPublic,
            "description": _ERROR_DESCRIPTIONS[code],
        }
        for code in status_codes
    }


class LastFailure(BaseModel):
    kind: str
    message: str
    at: str | None


class StatusPublic(BaseModel):
    state: str
    desired_state: str
    node: str | None = Field(
        default=None,
        description="The node whose engine this is (where it runs or last ran); base_url is "
        "that node's address of the engine.",
    )
    pid: int | None
    port: int | None
    base_url: str | None
    gpu_ids: list[int]
    launcher: str | None
    unit_name: str | None
    limits_enforced: bool | None
    restarts_total: int
    ooms_total: int
    consecutive_failures: int
    last_failure: LastFailure | None
    next_attempt_at: str | None
    restart_needed: bool
    since: str
    notes: dict[str, Any]
    desired_reason: str | None = Field(
        default=None,
        description="Why the desired state was set by the service itself: idle, evicted for M.",
    )
    in_flight: int = Field(default=0, description="Gateway requests being served right now.")
    last_request_at: str | None = Field(
        default=None, description="When the gateway last finished a request for this model."
    )


class ModelPublic(ModelSpec):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=SLUG_PATTERN)
    status: StatusPublic


class EventPublic(BaseModel):
    id: int
    at: str
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str
    data: dict[str, Any]


class CanStartPublic(BaseModel):
    ok: bool
    reason: str
    code: str | None
    required_mib: int | None
    gpu_ids: list[int]
    gpus: list[dict[str, int]]


# Kept in the status row's notes for the supervisor; shown under their own names or not at all.
_INTERNAL_NOTES = frozenset({"oom_counted_token", "desired_reason"})


def status_data(
    status: StatusRow, *, engine_host: str, activity: Activity | None = None
) -> dict[str, Any]:
    """StatusPublic as JSON-ready data (the list route builds hundreds of these)."""
    failure = None
    if status.last_failure_kind:
        failure = {
            "kind": status.last_failure_kind,
            "message": status.last_failure_message or "",
            "at": iso_ms(status.last_failure_at) if status.last_failure_at else None,
        }
    running = status.state in ("starting", "running", "stopping")
    return {
        "state": status.state,
        "desired_state": status.desired_state,
        "node": status.node,
        "pid": status.pid,
        "port": status.port if running else None,
        "base_url": f"http://{engine_host}:{status.port}" if running and status.port else None,
        "gpu_ids": list(status.gpu_ids) if running else [],
        "launcher": status.launcher,
        "unit_name": status.unit_name,
        "limits_enforced": status.limits_enforced,
        "restarts_total": status.restarts_total,
        "ooms_total": status.ooms_total,
        "consecutive_failures": status.consecutive_failures,
        "last_failure": failure,
        "next_attempt_at": iso_ms(status.next_attempt_at) if status.next_attempt_at else None,
        "restart_needed": status.restart_needed,
        "since": iso_ms(status.since),
        "notes": {k: v for k, v in status.notes.items() if k not in _INTERNAL_NOTES},
        "desired_reason": status.notes.get("desired_reason"),
        "in_flight": activity.in_flight if activity else 0,
        "last_request_at": (
            iso_ms(activity.last_request_at) if activity and activity.last_request_at else None
        ),
    }


def status_public(
    status: StatusRow, *, engine_host: str, activity: Activity | None = None
) -> StatusPublic:
    data = status_data(status, engine_host=engine_host, activity=activity)
    return StatusPublic.model_validate(data)


def model_public_data(
    spec_data: dict[str, Any],
    status: StatusRow,
    *,
    engine_host: str,
    activity: Activity | None = None,
) -> dict[str, Any]:
    """ModelPublic as JSON-ready data: the spec's (cached) JSON and its status."""
    return {**spec_data, "status": status_data(status, engine_host=engine_host, activity=activity)}


def event_public(row: EventRow) -> EventPublic:
    return EventPublic(
        id=row.id or 0,
        at=iso_ms(row.at),
        kind=row.kind,
        from_state=row.from_state,
        to_state=row.to_state,
        reason=row.reason,
        data=row.data,
    )
