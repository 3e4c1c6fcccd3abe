"""The low-memory monitor: alert hysteresis, gauges, gating, and the webhook sink."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.orchestrator.gpu.headroom import GpuAllocator
from app.orchestrator.gpu.monitor import AlertSink, GpuMonitor, WebhookSink
from app.orchestrator.gpu.probe import GpuInfo, GpuSnapshot
from app.orchestrator.metrics import Metrics

TOTAL_MIB = 81920
MIB = 1024 * 1024
LOW_MIB = 1000
GOOD_MIB = 60000


class FakeClock:
    """Time moves only when the monitor sleeps."""

    def __init__(self) -> None:
        self.current = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return (self.current - datetime(2025, 1, 1, tzinfo=UTC)).total_seconds()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += timedelta(seconds=seconds)
        await asyncio.sleep(0)  # let other tasks (and cancellation) in


class ScriptedProbe:
    """Each snapshot serves the next row of free MiB per GPU; the last row repeats."""

    backend = "fake"

    def __init__(self, rows: Sequence[Sequence[int]], total_mib: int = TOTAL_MIB) -> None:
        self.rows = list(rows)
        self.total_mib = total_mib
        self.reads = 0

    def snapshot(self) -> GpuSnapshot:
        row = self.rows[min(self.reads, len(self.rows) - 1)]
        self.reads += 1
        gpus = tuple(
            GpuInfo(i, "Fake GPU", f"GPU-fake-{i}", self.total_mib, free, self.total_mib - free, 0)
            for i, free in enumerate(row)
        )
        return GpuSnapshot(self.backend, True, None, gpus)

    def engine_placed(self, model_id: str, gpu_ids: Sequence[int], held_mib: int) -> None:
        pass

    def engine_removed(self, model_id: str) -> None:
        pass


class RecordingSink:
    def __init__(self) -> None:
        self.payloads: list[dict[str, object]] = []

    async def notify(self, payload: dict[str, object]) -> None:
        self.payloads.append(payload)


class HangingSink:
    """A receiver that never answers."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def notify(self, payload: dict[str, object]) -> None:
        self.called.set()
        await asyncio.Event().wait()


def make_monitor(
    probe: ScriptedProbe,
    *,
    samples: int = 3,
    threshold_mib: int | None = 2048,
    threshold_pct: float | None = None,
    sinks: Sequence[AlertSink] = (),
    on_event: Callable[[str, dict[str, object]], None] | None = None,
    allocator: GpuAllocator | None = None,
    sink_timeout_s: float = 10.0,
) -> tuple[GpuMonitor, Metrics, FakeClock]:
    metrics = Metrics()
    clock = FakeClock()
    monitor = GpuMonitor(
        probe,
        metrics=metrics,
        clock=clock,
        interval_s=5.0,
        threshold_mib=threshold_mib,
        threshold_pct=threshold_pct,
        samples=samples,
        sinks=sinks,
        on_event=on_event,
        allocator=allocator,
        sink_timeout_s=sink_timeout_s,
    )
    return monitor, metrics, clock


def gauge(metrics: Metrics, name: str, gpu: int) -> float | None:
    return metrics.registry.get_sample_value(name, {"gpu": str(gpu)})


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_monitor_gauges_read_back_from_the_registry() -> None:
    probe = ScriptedProbe([[GOOD_MIB, 30000]])
    allocator = GpuAllocator(ScriptedProbe([[TOTAL_MIB, TOTAL_MIB]]), margin_mib=1024)
    await allocator.reserve("m", gpu_memory_util=0.25, tensor_parallel_size=1)
    monitor, metrics, _ = make_monitor(probe, allocator=allocator)

    await monitor.sample_once()

    assert gauge(metrics, "gpu_orchestrator_gpu_memory_total_bytes", 0) == TOTAL_MIB * MIB
    assert gauge(metrics, "gpu_orchestrator_gpu_memory_free_bytes", 1) == 30000 * MIB
    assert gauge(metrics, "gpu_orchestrator_gpu_memory_reserved_bytes", 0) == 20480 * MIB
    assert gauge(metrics, "gpu_orchestrator_gpu_memory_reserved_bytes", 1) == 0
    assert gauge(metrics, "gpu_orchestrator_gpu_low_memory_alert", 0) == 0


async def test_monitor_alert_raises_gates_and_clears_after_n_samples() -> None:
    rows = [[LOW_MIB, GOOD_MIB]] * 3 + [[GOOD_MIB, GOOD_MIB]] * 3
    probe = ScriptedProbe(rows)
    events: list[tuple[str, dict[str, object]]] = []
    monitor, metrics, clock = make_monitor(probe, on_event=lambda k, d: events.append((k, d)))
    allocator = GpuAllocator(
        ScriptedProbe([[TOTAL_MIB, LOW_MIB]]), margin_mib=1024, low_memory=monitor.low_memory_gpus
    )

    for _ in range(2):
        await monitor.sample_once()
    assert monitor.low_memory_gpus() == frozenset()  # not before N samples
    assert gauge(metrics, "gpu_orchestrator_gpu_low_memory_alert", 0) == 0
    assert monitor.alerts()[0].low_samples == 2

    await monitor.sample_once()
    assert monitor.low_memory_gpus() == frozenset({0})
    assert gauge(metrics, "gpu_orchestrator_gpu_low_memory_alert", 0) == 1
    assert gauge(metrics, "gpu_orchestrator_gpu_low_memory_alert", 1) == 0
    state = monitor.alerts()[0]
    assert state.raised and state.since == clock.now() and state.free_mib == LOW_MIB
    assert [kind for kind, _ in events] == ["gpu_memory_low"]
    assert events[0][1]["gpu"] == 0 and events[0][1]["free_mib"] == LOW_MIB

    gated = await allocator.reserve("m", gpu_memory_util=0.5, tensor_parallel_size=1)
    assert gated.code == "gpu_memory_low"
    forced = await allocator.reserve("m", gpu_memory_util=0.5, tensor_parallel_size=1, force=True)
    assert forced.ok and forced.gpu_ids == (0,)
    allocator.release("m")

    for _ in range(2):
        await monitor.sample_once()
    assert monitor.low_memory_gpus() == frozenset({0})  # one good sample is not recovery

    await monitor.sample_once()
    assert monitor.low_memory_gpus() == frozenset()
    assert gauge(metrics, "gpu_orchestrator_gpu_low_memory_alert", 0) == 0
    assert [kind for kind, _ in events] == ["gpu_memory_low", "gpu_memory_recovered"]
    assert (await allocator.reserve("m", gpu_memory_util=0.5, tensor_parallel_size=1)).ok


async def test_monitor_interrupted_low_run_does_not_raise() -> None:
    rows = [[LOW_MIB], [LOW_MIB], [GOOD_MIB], [LOW_MIB], [LOW_MIB]]
    monitor, _, _ = make_monitor(ScriptedProbe(rows))

    for _ in rows:
        await monitor.sample_once()

    assert monitor.low_memory_gpus() == frozenset()
    assert monitor.alerts()[0].low_samples == 2


async def test_monitor_percentage_threshold() -> None:
    # 8% of 81920 MiB is 6553.6 MiB: 6000 is low, 7000 is not.
    monitor, _, _ = make_monitor(
        ScriptedProbe([[6000, 7000]]), samples=1, threshold_mib=None, threshold_pct=8.0
    )

    await monitor.sample_once()

    assert monitor.low_memory_gpus() == frozenset({0})


async def test_monitor_logs_a_warning_on_raise_and_clear(caplog: pytest.LogCaptureFixture) -> None:
    monitor, _, _ = make_monitor(ScriptedProbe([[LOW_MIB], [GOOD_MIB]]), samples=1)

    with caplog.at_level(logging.WARNING, logger="app.orchestrator.gpu.monitor"):
        await monitor.sample_once()
        await monitor.sample_once()

    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("GPU memory low: GPU 0 has 1000 MiB free") for m in messages)
    assert any(m.startswith("GPU memory recovered: GPU 0") for m in messages)


async def test_monitor_sinks_get_firing_then_resolved_bodies() -> None:
    sink = RecordingSink()
    monitor, _, clock = make_monitor(
        ScriptedProbe([[LOW_MIB], [LOW_MIB], [GOOD_MIB], [GOOD_MIB]]), samples=2, sinks=[sink]
    )

    await monitor.sample_once()
    await monitor.sample_once()
    raised_at = clock.now()
    await monitor.drain()
    clock.current += timedelta(seconds=10)
    await monitor.sample_once()
    await monitor.sample_once()
    await monitor.drain()

    firing, resolved = sink.payloads
    assert firing["status"] == "firing"
    assert firing["labels"] == {"alertname": "GpuMemoryLow", "gpu": "0", "severity": "warning"}
    assert (
        firing["startsAt"]
        == "2025-01-02T03:04:05.000Z"
        == raised_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    )
    assert "endsAt" not in firing
    annotations = firing["annotations"]
    assert isinstance(annotations, dict)
    assert "1000 MiB free" in annotations["description"]
    assert "threshold of 2048 MiB" in annotations["description"]
    assert resolved["status"] == "resolved"
    assert resolved["startsAt"] == firing["startsAt"]
    assert resolved["endsAt"] == "2025-01-02T03:04:15.000Z"


async def test_monitor_hanging_sink_does_not_block_sampling() -> None:
    sink = HangingSink()
    monitor, _, _ = make_monitor(
        ScriptedProbe([[LOW_MIB]]), samples=1, sinks=[sink], sink_timeout_s=0.05
    )

    await asyncio.wait_for(monitor.sample_once(), timeout=2.0)
    await asyncio.wait_for(sink.called.wait(), timeout=2.0)
    await asyncio.wait_for(monitor.sample_once(), timeout=2.0)

    await asyncio.wait_for(monitor.drain(), timeout=2.0)  # bounded by sink_timeout_s
    assert monitor.low_memory_gpus() == frozenset({0})


async def test_monitor_failing_on_event_does_not_stop_sampling() -> None:
    def explode(kind: str, data: dict[str, object]) -> None:
        raise RuntimeError("event log down")

    monitor, metrics, _ = make_monitor(ScriptedProbe([[LOW_MIB]]), samples=1, on_event=explode)

    await monitor.sample_once()

    assert gauge(metrics, "gpu_orchestrator_gpu_low_memory_alert", 0) == 1


async def test_monitor_run_samples_on_the_interval_until_cancelled() -> None:
    probe = ScriptedProbe([[LOW_MIB]])
    monitor, _, clock = make_monitor(probe, samples=3)

    task = asyncio.create_task(monitor.run())
    await wait_until(lambda: probe.reads >= 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert set(clock.sleeps) == {5.0}
    assert monitor.low_memory_gpus() == frozenset({0})


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[dict[str, object]]
    received: threading.Event

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.received.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[dict[str, object]], threading.Event]]:
    bodies: list[dict[str, object]] = []
    received = threading.Event()
    handler = type("Handler", (_Recorder,), {"bodies": bodies, "received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", bodies, received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_webhook_sink_posts_the_alert_body(
    webhook_server: tuple[str, list[dict[str, object]], threading.Event],
) -> None:
    url, bodies, received = webhook_server
    monitor, _, _ = make_monitor(
        ScriptedProbe([[LOW_MIB, GOOD_MIB]]), samples=1, sinks=[WebhookSink(url, timeout_s=5)]
    )

    await monitor.sample_once()
    await monitor.drain()

    assert received.is_set()
    assert len(bodies) == 1
    assert bodies[0]["status"] == "firing"
    assert bodies[0]["labels"] == {"alertname": "GpuMemoryLow", "gpu": "0", "severity": "warning"}


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port: int = probe_socket.getsockname()[1]
    return port


async def test_webhook_sink_closed_port_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = WebhookSink(f"http://127.0.0.1:{closed_port()}/alerts", timeout_s=2)

    with caplog.at_level(logging.WARNING, logger="app.orchestrator.gpu.monitor"):
        await sink.notify({"status": "firing"})

    assert any("alert webhook" in r.getMessage() for r in caplog.records)
