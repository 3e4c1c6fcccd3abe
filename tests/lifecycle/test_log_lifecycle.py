"""What a model judges in its log and what its status says about it.

- A model deleted and created again never inherits the earlier model's log.
- The orchestrator's own /health probes leave no access line; other requests still do.
- An engine that the kernel kills for memory (it prints nothing) is `host_oom` with its limit.
- A failure's message carries the evidence line, the figures it states and the remedy.

The in-memory tier (fake clock and launcher, milliseconds a case) first, then the fake engine as
a real process.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.orchestrator.engine_command import build_argv
from app.orchestrator.failures import FailureKind
from app.orchestrator.launchers.base import ExitCause
from app.orchestrator.lifecycle import ModelState
from app.orchestrator.lifecycle.messages import LogGrew
from app.orchestrator.spec import ModelSpec, RestartPolicy
from tests.conftest import MakeSettings, running_app
from tests.fakes import free_port, http_json, run_fake_engine, wait_until, wait_until_async
from tests.fakes.memory import LaunchScript
from tests.lifecycle.helpers import wait_state, wait_status
from tests.lifecycle.memory_harness import MemoryWorld, fixture_log, memory_world
from tests.lifecycle.orchestrator_process import SERVE, OrchestratorProcess, orchestrator_env
from tests.unit.test_exit_cause import limited_memory_cgroup

KV_FIGURES = (
    "[needed 4.54 GiB, available 1.71 GiB (max_model_len 131072, about 49152 fits); change "
    "gpu_memory_util or max_model_len]"
)
NO_RESTART = {"max_restarts": 0}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[MemoryWorld]:
    async with memory_world(tmp_path) as built:
        yield built


# -- a model deleted and created again -------------------------------------------------------------
async def test_log_recreated_model_never_judges_the_deleted_models_log(world: MemoryWorld) -> None:
    await world.add("m", restart_policy=RestartPolicy(max_restarts=0))
    await world.run("m")
    world.launcher.latest("m").write_log(fixture_log("gpu_oom_load.log"))
    await world.crash("m")
    assert world.status("m").last_failure_kind == FailureKind.GPU_OOM
    assert (await world.orchestrator.delete_model("m", force=True)).error is None

    await world.add("m")
    await world.run("m")
    world.launcher.latest("m").write_log(["INFO 07-10 09:00:00 [api_server.py:1090] serving"])
    world.supervisor("m").post(LogGrew())
    await world.settle()

    status = world.status("m")
    assert status.state == ModelState.RUNNING
    assert (status.ooms_total, status.last_failure_kind) == (0, None)
    log = world.ctx.log_path("m")
    [earlier] = log.parent.glob("m.log.deleted-*")
    assert "CUDA out of memory" in earlier.read_text()  # kept, readable
    assert "CUDA out of memory" not in log.read_text()
    assert world.ctx.metrics.registry.get_sample_value(
        "gpu_orchestrator_vllm_ooms_total", {"model": "m"}
    ) in (None, 0.0)


async def test_log_model_that_ran_keeps_its_log_after_a_restart_of_the_orchestrator(
    world: MemoryWorld,
) -> None:
    """Only a model that never launched nor read its log sets a file aside: an OOM its engine
    printed while the orchestrator was down is still its own."""
    spec = world.spec("m")
    log = world.ctx.log_path("m")
    log.write_text("\n".join(fixture_log("gpu_oom_load.log")) + "\n")
    status = await world.recorded(
        spec, state="running", desired_state="running", pid=4242, launch_token="run-1", port=30001
    )

    await world.adopt(spec, status)

    assert world.status("m").last_failure_kind == FailureKind.GPU_OOM
    assert world.status("m").ooms_total == 1
    assert list(log.parent.glob("m.log.deleted-*")) == []


# -- the figures and the remedy in the message -----------------------------------------------------
async def test_log_kv_cache_failure_message_has_evidence_figures_and_remedy(
    world: MemoryWorld,
) -> None:
    await world.add("m")
    await world.start("m")
    world.launcher.latest("m").write_log(fixture_log("kv_cache_max_seq_len.log"))
    await world.crash("m")

    status = world.status("m")
    assert status.state == ModelState.DEGRADED
    message = status.last_failure_message or ""
    assert message.startswith("kv_cache_insufficient: ")
    assert "ValueError: To serve at least one request with the models's max seq len" in message
    assert KV_FIGURES in message
    assert "--kv-cache-memory-bytes" in message and "VLLM_CPU_KVCACHE_SPACE" in message


async def test_log_failure_found_at_adoption_has_the_same_figures(world: MemoryWorld) -> None:
    """An engine that printed the KV cache error and died while the orchestrator was down."""
    spec = world.spec("m")
    world.ctx.log_path("m").write_text("\n".join(fixture_log("kv_cache_max_seq_len.log")) + "\n")
    status = await world.recorded(
        spec, state="starting", desired_state="running", pid=4242, launch_token="run-1"
    )

    await world.adopt(spec, status)

    status = world.status("m")
    assert status.last_failure_kind == FailureKind.KV_CACHE_INSUFFICIENT
    assert KV_FIGURES in (status.last_failure_message or "")


# -- killed by the kernel for memory ---------------------------------------------------------------
async def test_log_oom_kill_the_launcher_reports_is_host_oom_with_the_limit(
    world: MemoryWorld,
) -> None:
    cause = ExitCause("oom_kill", "48 GiB", "unit vllm-m.service Result=oom-kill")
    world.launcher.script(LaunchScript(exit_cause=cause))
    await world.add("m")
    await world.run("m")

    await world.crash("m", code=-9)

    status = world.status("m")
    assert status.last_failure_kind == FailureKind.HOST_OOM
    message = status.last_failure_message or ""
    assert message.startswith("host_oom: killed by the kernel's OOM killer at its memory limit")
    assert "48 GiB" in message and "Result=oom-kill" in message
    assert "Raise memory_max" in message  # the remedy
    assert status.ooms_total == 1
    [oom] = await world.events(kind="oom")
    assert oom.data is not None and oom.data["figures"] == {"total": "48 GiB"}
    assert status.state == ModelState.FAILED  # a restart may fix it: backoff, not degraded


async def test_log_plain_exit_stays_an_exit(world: MemoryWorld) -> None:
    await world.add("m")
    await world.run("m")

    await world.crash("m", code=1)

    status = world.status("m")
    assert (status.last_failure_kind, status.ooms_total) == (FailureKind.EXIT, 0)


# -- the same with the fake engine as a real process -----------------------------------------------
def _spec(model_id: str, fake_flags: str = "", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": model_id, "model": "/models/tiny", "gpu_memory_util": 0.3}
    if fake_flags:
        body["env"] = {"FAKE_ENGINE_ARGS": fake_flags}
    return {**body, **fields}


def _tracker_offset(app: Any, model_id: str) -> int:
    offset: int = app.state.services.orchestrator.supervisors[model_id].engine.oom.follower.offset
    return offset


async def test_log_recreated_model_runs_healthy_with_the_fake_engine(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    log = settings.resolved_log_dir / "m.log"
    async with running_app(settings) as (app, client):
        first = _spec("m", "--oom-kind gpu_oom --oom-after-s 0.2", restart_policy=NO_RESTART)
        assert (await client.post("/models", json=first)).status_code == 201
        await client.post("/models/m/start")
        await wait_status(client, "m", lambda s: (s["last_failure"] or {}).get("kind") == "gpu_oom")
        assert (await client.delete("/models/m")).status_code == 204

        assert (await client.post("/models", json=_spec("m"))).status_code == 201
        await client.post("/models/m/start")
        status = await wait_state(client, "m", "running")
        # Every line of the new file judged, the engine's start-up included.
        await wait_until_async(lambda: _tracker_offset(app, "m") == log.stat().st_size, 10)

        status = (await client.get("/models/m")).json()["status"]
        assert status["state"] == "running"
        assert (status["ooms_total"], status["last_failure"]) == (0, None)
        [earlier] = log.parent.glob("m.log.deleted-*")
        assert "CUDA out of memory" in earlier.read_text()
        await client.post("/models/m/stop?wait=true")


# -- the access log --------------------------------------------------------------------------------
def test_log_fake_engine_leaves_out_only_the_paths_vllms_flag_names() -> None:
    quiet = ["--disable-access-log-for-endpoints", "/health,/metrics"]
    with run_fake_engine(extra_args=quiet) as engine:
        engine.wait_ready()
        for path in ("/health", "/health?probe=1", "/v1/models"):
            assert http_json("GET", engine.url(path))[0] == 200
        body = {"model": "fake-model", "prompt": "hi", "max_tokens": 1}
        assert http_json("POST", engine.url("/v1/completions"), body)[0] == 200
        engine.wait_log('"POST /v1/completions HTTP/1.1" 200')
        text = engine.log_text()
    assert '"GET /v1/models HTTP/1.1" 200' in text
    assert "GET /health" not in text


def test_log_fake_engine_logs_health_probes_without_the_flag() -> None:
    with run_fake_engine() as engine:
        engine.wait_ready()
        engine.wait_log('"GET /health HTTP/1.1" 200')


async def test_log_orchestrators_health_probes_leave_no_access_line(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(health_interval_s=0.05)
    log = settings.resolved_log_dir / "m.log"
    async with running_app(settings) as (_app, client):
        await client.post("/models", json=_spec("m"))
        await client.post("/models/m/start")
        status = await wait_state(client, "m", "running")
        base_url = status["base_url"]

        def probes() -> int:
            state = http_json("GET", f"{base_url}/fake/state")[1] or {}
            return int(state.get("requests", {}).get("/health", 0))

        await wait_until_async(lambda: probes() >= 5, 10, what="readiness and health probes")
        body = {"model": "m", "prompt": "hi", "max_tokens": 1}
        assert http_json("POST", f"{base_url}/v1/completions", body)[0] == 200
        line = '"POST /v1/completions HTTP/1.1" 200'
        await wait_until_async(lambda: line in log.read_text(), 10)

        assert "GET /health" not in log.read_text()
        await client.post("/models/m/stop?wait=true")


# -- the kernel's OOM killer in a container with a memory limit ------------------------------------
def _serve_in(cgroup: Path, state_dir: Path) -> OrchestratorProcess:
    """The orchestrator as a process inside `cgroup`, as in a container with a memory limit:
    the engines it starts inherit it."""
    procs, port = cgroup / "cgroup.procs", free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "orchestrator.log").open("ab") as log:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port), "--log-level", "warning"],
            env=orchestrator_env(state_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
            # Joins the cgroup between fork and exec.
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
        )
    return OrchestratorProcess(process, port)


def _ready(orchestrator: OrchestratorProcess) -> bool:
    try:
        return orchestrator.client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _failure_kind(orchestrator: OrchestratorProcess) -> str | None:
    failure = orchestrator.status("m")["last_failure"] or {}
    return failure.get("kind")


def test_log_engine_killed_at_the_containers_memory_limit_is_host_oom(tmp_path: Path) -> None:
    """The subprocess launcher, the real kernel: the engine allocates until the OOM killer ends
    it at the cgroup's limit, printing nothing."""
    with limited_memory_cgroup(768 * 2**20) as cgroup:
        orchestrator = _serve_in(cgroup, tmp_path)
        try:
            wait_until(lambda: _ready(orchestrator), 30, what="orchestrator ready")
            spec = _spec("m", "--grow-memory-after-s 0.2", restart_policy=NO_RESTART)
            orchestrator.client.post("/models", json=spec).raise_for_status()
            orchestrator.client.post("/models/m/start")
            wait_until(lambda: _failure_kind(orchestrator) == "host_oom", 60, what="host_oom")
            status = orchestrator.status("m")
        finally:
            orchestrator.kill()
            orchestrator.client.close()
    message = status["last_failure"]["message"]
    assert "killed by the kernel's OOM killer at its memory limit of 768 MiB" in message
    assert "oom_kill 0 -> 1" in message
    assert status["ooms_total"] == 1


# -- the engine's argv keeps the probes out of the access log -------------------------------------
def _argv(extra_args: list[str]) -> list[str]:
    spec = ModelSpec(id="m", model="x", extra_args=extra_args)
    return build_argv(
        spec, base_command=["vllm", "serve"], model_path="/m", host="h", port=1, adapters=()
    )


def test_engine_argv_keeps_health_probes_out_of_the_access_log() -> None:
    argv = _argv(["--enforce-eager"])

    flag = argv.index("--disable-access-log-for-endpoints")
    assert argv[flag + 1] == "/health" and argv[-1] == "--enforce-eager"


@pytest.mark.parametrize(
    ("extra_args", "merged"),
    [
        (["--disable-access-log-for-endpoints", "/metrics"], ["/metrics,/health"]),
        (["--disable-access-log-for-endpoints=/metrics,/ping"], ["=/metrics,/ping,/health"]),
        (["--disable_access_log_for_endpoints", "/health,/metrics"], ["/health,/metrics"]),
        (["--disable-access-log-for", "/metrics"], ["/metrics,/health"]),  # argparse prefix
    ],
)
def test_engine_argv_merges_health_into_the_operators_own_quiet_paths(
    extra_args: list[str], merged: list[str]
) -> None:
    """vLLM keeps the last of a repeated flag: a second flag of ours would undo the operator's
    (or the operator's ours), so /health joins the operator's list instead."""
    argv = _argv(extra_args)

    assert sum(token.startswith("--disable") for token in argv) == 1
    assert argv[-1].endswith(merged[0])


def test_engine_argv_adds_nothing_when_the_access_log_is_off() -> None:
    """--disable-uvicorn-access-log silences every access line (and runs a vLLM older than
    --disable-access-log-for-endpoints, which would refuse that flag)."""
    argv = _argv(["--disable-uvicorn-access-log"])

    assert "--disable-access-log-for-endpoints" not in argv


# -- the real engine -------------------------------------------------------------------------------
@pytest.mark.engine
async def test_log_real_vllm_logs_requests_but_not_the_probes(make_settings: MakeSettings) -> None:
    """vLLM's CPU build on the tiny model: hundreds of readiness probes while it loads, then the
    health check, and not one access line for them; a completion is still logged."""
    engine_python = os.environ.get("GPU_ORCH_TEST_ENGINE_PYTHON")
    tiny_model = os.environ.get("GPU_ORCH_TEST_TINY_MODEL")
    if not engine_python or not tiny_model:
        if os.environ.get("CI"):
            pytest.fail("CI must run the real-engine tests: run them through `make test`")
        pytest.skip("set by `make test`: GPU_ORCH_TEST_ENGINE_PYTHON and GPU_ORCH_TEST_TINY_MODEL")
    settings = make_settings(
        vllm_command=[engine_python, "-m", "vllm.entrypoints.openai.api_server", "--model"],
        engine_env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        model_store_root=Path(tiny_model),
        start_timeout_s=300,
        stop_grace_s=20,
        health_interval_s=0.2,
    )
    spec = {
        "id": "tiny",
        "model": str(Path(tiny_model) / "model"),
        "dtype": "float32",
        "gpu_memory_util": 0.5,
        "max_model_len": 256,
    }
    log = settings.resolved_log_dir / "tiny.log"
    async with running_app(settings) as (_app, client):
        assert (await client.post("/models", json=spec)).status_code == 201
        await client.post("/models/tiny/start")
        status = await wait_state(client, "tiny", "running", timeout_s=300)
        body = {"model": "tiny", "prompt": "the orchestrator", "max_tokens": 2, "temperature": 0}
        async with httpx.AsyncClient(base_url=status["base_url"], timeout=60) as engine:
            for _ in range(5):  # a few health checks' worth of time, and a model list
                assert (await engine.get("/v1/models")).status_code == 200
            assert (await engine.post("/v1/completions", json=body)).status_code == 200
        line = '"POST /v1/completions HTTP/1.1" 200'
        await wait_until_async(lambda: line in log.read_text(), 30)
        text = log.read_text()
        await client.post("/models/tiny/stop?wait=true")
    assert '"GET /v1/models HTTP/1.1" 200' in text
    assert "GET /health" not in text
