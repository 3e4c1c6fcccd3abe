"""What a spec edit may do to a model whose engine is up: a pure judgement the supervisor acts
on, so an edit either applies to the run that starts next, is refused (409), or flags
`restart_needed`; it is never silently lost."""

from __future__ import annotations

from dataclasses import dataclass

from app.orchestrator.lifecycle.errors import CommandError, ErrorCode
from app.orchestrator.spec import ModelSpec

# Fields an engine does not read at launch: a change applies to a running engine at once.
LIVE_FIELDS = frozenset({"restart_policy", "start_timeout_s", "on_demand", "max_concurrency"})
# Adapters change live on an engine launched with LoRA (load/unload, no restart).
ADAPTER_FIELDS = frozenset({"adapter_paths", "adapter_names"})


@dataclass(frozen=True)
class SpecChange:
    fields: frozenset[str]
    restart_needed: bool = False
    error: CommandError | None = None
    live_adapters: bool = False  # the running engine's adapters are to be reconciled


def changed_fields(current: ModelSpec, new: ModelSpec) -> frozenset[str]:
    return frozenset(
        name for name in ModelSpec.model_fields if getattr(current, name) != getattr(new, name)
    )


def judge_spec_change(
    current: ModelSpec,
    new: ModelSpec,
    *,
    engine_up: bool,
    running_policy: str,
    live_adapters: bool = False,
) -> SpecChange:
    """`running_policy` "refuse" answers 409 model_running for launch-time fields while an
    engine is up (the API's rule); "flag" accepts them and flags restart_needed (manifests).
    With `live_adapters` (the engine was launched with LoRA) adapter changes apply live."""
    fields = changed_fields(current, new)
    launch_fields = fields - LIVE_FIELDS
    if engine_up and live_adapters and launch_fields and launch_fields <= ADAPTER_FIELDS:
        return SpecChange(fields, live_adapters=True)
    if not engine_up or not launch_fields:
        return SpecChange(fields)
    if running_policy == "flag":
        return SpecChange(fields, restart_needed=True)
    names = ", ".join(sorted(launch_fields))
    message = f"model {current.id} has an engine up: stop it before you change {names}"
    figures = {"fields": sorted(launch_fields)}
    return SpecChange(fields, error=CommandError(ErrorCode.MODEL_RUNNING, message, figures))
