"""Schema-driven fuzzing of the whole API with schemathesis, in-process over ASGI.

Every operation of the app's own OpenAPI schema gets generated requests, valid (positive) and
invalid (negative), sent with the token. Each answer must not be a 5xx, must use a documented
status code, and must match the documented response schema. Path ids are often swapped for models
that exist (and whose engines the fuzzer starts, stops and reconfigures), so the requests reach the
lifecycle code and not only the 404 branch. Failures are collected, not raised at the first one,
so the summary line counts every request; each distinct failure found is kept as a regression test
in test_hostile_input.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.structures import CaseInsensitiveDict
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.conftest import MakeSettings, kill_engines_of

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_MODE = 35
MIN_REQUESTS = 1000
# Models that exist before fuzzing, so generated calls on /models/{id}/... reach real code.
KNOWN_IDS = ("fuzz-a", "fuzz-b")
KNOWN_SPEC = {"model": "/models/tiny", "gpu_memory_util": 0.3}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


@dataclass
class FuzzTally:
    requests: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def summary(self) -> str:
        return f"schemathesis: {self.requests} requests, {len(self.failures)} failures"


def engines_of(state_dir: Path) -> list[int]:
    """Pids of engines that an orchestrator launched with logs under `state_dir`."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if "GPU_ORCH_LAUNCH_TOKEN" not in process.environ():
                continue
            files = " ".join(item.path for item in process.open_files())
            if str(state_dir) in files or str(state_dir) in " ".join(process.cmdline()):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


Operation = APIOperation[Any, Any, Any, Any]


def ordered_operations(schema: schemathesis.BaseSchema) -> list[Operation]:
    """Every operation, deletes last, so the known models live through the lifecycle calls."""
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the app's schema does not load: {result!r}"
        operations.append(result.ok())
    return sorted(operations, key=lambda operation: operation.method.upper() == "DELETE")


def fuzz_operation(operation: Operation, mode: GenerationMode, tally: FuzzTally) -> None:
    has_model_id = "{model_id}" in operation.path
    pick_known = st.sampled_from([None, *KNOWN_IDS]) if has_model_id else st.none()

    @given(case=operation.as_strategy(generation_mode=mode), known_id=pick_known)
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Operation], known_id: str | None) -> None:
        if known_id is not None:
            case.path_parameters["model_id"] = known_id
        # The token always goes along (auth is tested on its own in test_auth.py), also on the
        # cases generated to lack it; an empty header map must be replaced, not updated.
        case.headers = CaseInsensitiveDict({**case.headers, **AUTH})
        response = case.call()
        tally.requests += 1
        tally.statuses[(operation.label, response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH)
        except FailureGroup as error:
            key = f"{operation.label} [{mode.value}] -> {response.status_code}"
            tally.failures.setdefault(key, f"{case.as_curl_command(headers=AUTH)}\n{error}")

    # No invalid request exists for an operation without inputs (GET /healthz).
    with suppress(Unsatisfiable):
        run()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout_s} s: {what}")
        time.sleep(0.05)


def remove_every_model(client: Any) -> None:
    """DELETE ?force=true each model (stops its engine) until the registry is empty."""

    def registry_empty() -> bool:
        models = client.get("/models").json()
        for model in models:
            client.delete(f"/models/{model['id']}", params={"force": "true"})
        return not models

    wait_for(registry_empty, 60.0, "every model deleted")


def test_fuzz_schemathesis_finds_no_server_error_or_schema_mismatch(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    app_settings = make_settings(api_token=TOKEN)
    state_dir = app_settings.state_dir
    app: Any = create_app(app_settings)  # schemathesis types its ASGI app more narrowly
    tally = FuzzTally()
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
        with asgi.get_client(app) as client:
            client.headers.update(AUTH)
            for model_id in KNOWN_IDS:
                spec: dict[str, Any] = {**KNOWN_SPEC, "id": model_id}
                assert client.post("/models", json=spec).status_code == 201
            for operation in ordered_operations(schema):
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    fuzz_operation(operation, mode, tally)
            remove_every_model(client)
            wait_for(lambda: not engines_of(state_dir), 30.0, "no engine process left")
        asgi.shutdown_lifespans()
        with capsys.disabled():
            print(f"\n{tally.summary()}")
        assert tally.requests >= MIN_REQUESTS, tally.summary()
        assert not tally.failures, "\n\n".join(f"{k}\n{v}" for k, v in tally.failures.items())
        # The fuzzing reached the lifecycle: some generated start or restart launched an engine.
        launched = sum(
            count
            for (label, status), count in tally.statuses.items()
            if status == 202 and label.endswith(("/start", "/restart"))
        )
        assert launched > 0, sorted(tally.statuses.items())
        assert engines_of(state_dir) == []
    finally:
        asgi.shutdown_lifespans()
        kill_engines_of(state_dir)
