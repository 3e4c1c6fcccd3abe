"""Catching up on a large log backlog after downtime does not block the service.

The orchestrator is SIGKILLed while its engine runs; 500 MB of log arrive while it is down, the
last lines an out-of-memory traceback of the recorded run. The orchestrator started again must
keep answering `/healthz` within 100 ms all the while, its memory must not grow with the backlog,
and the OOM at the very end must still be found and attributed to that run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from app.orchestrator.launchers.process import group_members
from tests.fakes import free_port, wait_until
from tests.lifecycle.orchestrator_process import (
    SERVE,
    OrchestratorProcess,
    orchestrator_env,
    orchestrator_process,
)

BACKLOG_BYTES = 500 * 1024 * 1024
HEALTHZ_LIMIT_S = 0.100
RSS_GROWTH_LIMIT_BYTES = 50 * 1024 * 1024
CATCH_UP_DEADLINE_S = 300.0
SPEC = {
    "id": "tiny",
    "model": "/models/tiny",
    "gpu_memory_util": 0.3,
    "restart_policy": {"max_restarts": 3, "backoff_initial_s": 0.1},
}
OOM_EVIDENCE = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.19 GiB of which 1.12 GiB is free."
)
OOM_TRACE = f"""\
(EngineCore_DP0 pid=2211) ERROR 07-10 08:59:40 [core.py:710] EngineCore encountered a fatal error.
Traceback (most recent call last):
  File "/usr/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 701, in run_engine_core
    engine_core.run_busy_loop()
{OOM_EVIDENCE}
"""


def _healthy_block() -> bytes:
    """About 1 MiB of what a serving engine logs: access lines of probes and requests, the
    periodic metrics line, which mentions the KV cache, and nothing that is a failure."""
    lines = [
        '(APIServer pid=2200) INFO:     127.0.0.1:51734 - "GET /health HTTP/1.1" 200 OK',
        '(APIServer pid=2200) INFO:     10.0.3.4:40112 - "POST /v1/completions HTTP/1.1" 200 OK',
        "(APIServer pid=2200) INFO 07-10 08:41:07 [loggers.py:123] Engine 000: Avg prompt "
        "throughput: 812.3 tokens/s, Avg generation throughput: 95.1 tokens/s, Running: 3 reqs, "
        "Waiting: 0 reqs, GPU KV cache usage: 12.4%, Prefix cache hit rate: 41.0%",
        "(EngineCore_DP0 pid=2211) INFO 07-10 08:41:07 [gpu_worker.py:298] Available KV cache "
        "memory: 25.31 GiB",
    ]
    text = "\n".join(lines) + "\n"
    return (text * (1024 * 1024 // len(text))).encode()


def _append_backlog(log: Path) -> None:
    block = _healthy_block()
    with log.open("ab") as handle:
        for _block in range(-(-BACKLOG_BYTES // len(block))):  # rounded up
            handle.write(block)
        handle.write(OOM_TRACE.encode())


@contextmanager
def _live_orchestrator(state_dir: Path) -> Iterator[OrchestratorProcess]:
    """The orchestrator as a process, handed over as soon as /healthz answers: /readyz waits for
    the re-adoption, and the re-adoption (the catch-up) is what this test watches."""
    port = free_port()
    output = (state_dir / f"orchestrator-{port}.log").open("ab")
    process = subprocess.Popen(
        [*SERVE, "--port", str(port), "--log-level", "warning"],
        env=orchestrator_env(state_dir),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    running = OrchestratorProcess(process, port)

    def live() -> bool:
        try:
            return running.client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(live, 30, what="orchestrator answers /healthz")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        running.client.close()
        output.close()


def _ready(orchestrator: OrchestratorProcess) -> bool:
    return orchestrator.client.get("/readyz").status_code == 200


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def test_log_backlog_catch_up_keeps_healthz_fast_and_memory_flat(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as first:
        assert first.client.post("/models", json=SPEC).status_code == 201
        first.client.post("/models/tiny/start")
        recorded = first.wait_state("tiny", "running")
        first.kill()
    log = state_dir / "logs" / "tiny.log"
    try:
        _append_backlog(log)
        assert log.stat().st_size > BACKLOG_BYTES
        # The engine died of the OOM it printed while nobody watched.
        os.killpg(recorded["pid"], signal.SIGKILL)
        wait_until(lambda: not group_members(recorded["pid"]), 10, what="engine gone")

        with _live_orchestrator(state_dir) as second:
            service = psutil.Process(second.process.pid)
            baseline_rss = service.memory_info().rss
            peak_rss = baseline_rss
            slowest_s = 0.0
            probes = during_catch_up = 0
            status: dict[str, object] = {}
            deadline = time.monotonic() + CATCH_UP_DEADLINE_S
            with httpx.Client(base_url=second.url, timeout=10) as probe:
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    assert probe.get("/healthz").status_code == 200
                    slowest_s = max(slowest_s, time.perf_counter() - started)
                    probes += 1
                    peak_rss = max(peak_rss, service.memory_info().rss)
                    status = second.status("tiny")
                    if status["ooms_total"] == 1 and status["last_failure"] is not None:
                        break
                    if status["ooms_total"] == 0:
                        during_catch_up += 1
                    time.sleep(0.01)  # the probe's pace, not a wait for the result
            assert status.get("ooms_total") == 1, f"OOM not found in time; last status {status}"
            wait_until(lambda: _ready(second), 60, what="ready once re-adopted")
            events = second.client.get("/models/tiny/events", params={"limit": 1000}).json()
    finally:
        log.unlink(missing_ok=True)

    print(  # the figures, for `pytest -s`
        f"backlog caught up after {probes} probes ({during_catch_up} before the OOM was "
        f"found); slowest /healthz "
        f"{slowest_s * 1000:.1f} ms; RSS {baseline_rss / 2**20:.0f} -> {peak_rss / 2**20:.0f} MiB"
    )
    # Reading the backlog on the event loop would hold up the start itself: the service would
    # answer only once the OOM was found.
    assert during_catch_up >= 10, "the service did not answer while it caught up"
    assert slowest_s < HEALTHZ_LIMIT_S, f"/healthz took {slowest_s * 1000:.0f} ms"
    growth = peak_rss - baseline_rss
    assert growth < RSS_GROWTH_LIMIT_BYTES, f"RSS grew {growth / 2**20:.0f} MiB"
    failure = status["last_failure"]
    assert isinstance(failure, dict) and failure["kind"] == "gpu_oom"
    assert "while the orchestrator was down" in failure["message"]
    assert OOM_EVIDENCE in failure["message"]
    oom_events = [event for event in events if event["kind"] == "oom"]
    assert len(oom_events) == 1 and oom_events[0]["data"]["evidence"] == OOM_EVIDENCE
    assert oom_events[0]["data"]["figures"]["needed"] == "2.00 GiB"
