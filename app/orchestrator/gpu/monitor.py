"""The low-memory monitor: samples the GPUs on an interval, exports gauges, raises an alert.

A GPU is "low" in a sample when its free memory is under `threshold_mib`, or under
`threshold_pct` percent of its total. The alert is raised after `samples` low samples in a row
and cleared after `samples` good ones in a row, so one spike neither raises nor clears it. While
raised, `low_memory_gpus()` holds the GPU, and the allocator refuses to place engines there
(gpu_memory_low) unless forced. On raise and clear: a WARNING log line, the
gpu_orchestrator_gpu_low_memory_alert gauge, an `on_event` callback, and an Alertmanager-like
body sent to each sink in the background, so a slow receiver never delays sampling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import httpx

from app.orchestrator.clock import Clock, iso_ms
from app.orchestrator.gpu.headroom import GpuAllocator
from app.orchestrator.gpu.probe import MIB_BYTES, GpuInfo, GpuProbe, GpuSnapshot
from app.orchestrator.metrics import Metrics

logger = logging.getLogger(__name__)

ALERT_NAME = "GpuMemoryLow"
EVENT_LOW = "gpu_memory_low"
EVENT_RECOVERED = "gpu_memory_recovered"


@dataclass
class AlertState:
    """The alert of one GPU. `since` is when it was raised; the counters are the current run."""

    gpu: int
    raised: bool = False
    since: datetime | None = None
    low_samples: int = 0
    good_samples: int = 0
    free_mib: int | None = None


class AlertSink(Protocol):
    """Receives the alert body on raise ("firing") and clear ("resolved")."""

    async def notify(self, payload: dict[str, object]) -> None: ...


class WebhookSink:
    """POSTs the alert body as JSON. Failures are logged at WARNING and never raised."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    async def notify(self, payload: dict[str, object]) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.post(self.url, json=payload)
                response.raise_for_status()
        except Exception as exc:  # a receiver's failure must never reach the service
            logger.warning("alert webhook %s failed: %s", self.url, exc or type(exc).__name__)


class GpuMonitor:
    """Samples `probe` every `interval_s`; see the module docstring for the alert rule."""

    def __init__(
        self,
        probe: GpuProbe,
        *,
        metrics: Metrics,
        clock: Clock,
        interval_s: float,
        threshold_mib: int | None,
        threshold_pct: float | None,
        samples: int,
        sinks: Sequence[AlertSink] = (),
        on_event: Callable[[str, dict[str, object]], None] | None = None,
        allocator: GpuAllocator | None = None,
        sink_timeout_s: float = 10.0,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0: {interval_s}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1: {samples}")
        self._probe = probe
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._threshold_mib = threshold_mib
        self._threshold_pct = threshold_pct
        self._samples = samples
        self._sinks = tuple(sinks)
        self._on_event = on_event
        self._allocator = allocator
        self._sink_timeout_s = sink_timeout_s
        self._states: dict[int, AlertState] = {}
        self._probe_error: str | None = None
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._notifications: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Sample, sleep `interval_s`, repeat until cancelled. A failed sample is only logged."""
        while True:
            try:
                await self.sample_once()
            except Exception:
                logger.exception("GPU monitor sample failed")
            await self._clock.sleep(self._interval_s)

    async def sample_once(self) -> None:
        """Take one sample: update the gauges and every GPU's alert state."""
        # Off the loop: NVML calls block.
        snapshot = await asyncio.to_thread(self._probe.snapshot)
        self._note_probe_health(snapshot)
        reserved_mib = self._allocator.reservations_mib() if self._allocator else {}
        for gpu in snapshot.gpus:
            label = str(gpu.index)
            self._metrics.gpu_memory_total_bytes.labels(gpu=label).set(gpu.total_mib * MIB_BYTES)
            self._metrics.gpu_memory_free_bytes.labels(gpu=label).set(gpu.free_mib * MIB_BYTES)
            reserved_bytes = reserved_mib.get(gpu.index, 0) * MIB_BYTES
            self._metrics.gpu_memory_reserved_bytes.labels(gpu=label).set(reserved_bytes)
            self._update_alert(gpu)

    def low_memory_gpus(self) -> frozenset[int]:
        """GPUs whose low-memory alert is raised."""
        return frozenset(state.gpu for state in self._states.values() if state.raised)

    def alerts(self) -> list[AlertState]:
        """A copy of every GPU's alert state, by GPU index."""
        return [replace(self._states[gpu]) for gpu in sorted(self._states)]

    async def drain(self) -> None:
        """Wait for alert notifications still being sent (at shutdown, and in tests)."""
        while self._notifications:
            await asyncio.gather(*list(self._notifications))

    def _note_probe_health(self, snapshot: GpuSnapshot) -> None:
        # Logged on change only: an absent driver would otherwise log every interval.
        error = None if snapshot.available else snapshot.error
        if error != self._probe_error:
            if error is not None:
                logger.warning("GPU probe (%s) unavailable: %s", snapshot.backend, error)
            else:
                logger.info("GPU probe (%s) readable again", snapshot.backend)
            self._probe_error = error

    def _update_alert(self, gpu: GpuInfo) -> None:
        state = self._states.setdefault(gpu.index, AlertState(gpu=gpu.index))
        state.free_mib = gpu.free_mib
        if self._is_low(gpu):
            state.low_samples += 1
            state.good_samples = 0
            if not state.raised and state.low_samples >= self._samples:
                self._raise(state, gpu)
        else:
            state.good_samples += 1
            state.low_samples = 0
            if state.raised and state.good_samples >= self._samples:
                self._clear(state, gpu)
        self._metrics.gpu_low_memory_alert.labels(gpu=str(gpu.index)).set(int(state.raised))

    def _is_low(self, gpu: GpuInfo) -> bool:
        if self._threshold_mib is not None and gpu.free_mib < self._threshold_mib:
            return True
        if self._threshold_pct is not None and gpu.total_mib > 0:
            return gpu.free_mib / gpu.total_mib * 100 < self._threshold_pct
        return False

    # good -> RAISED
    def _raise(self, state: AlertState, gpu: GpuInfo) -> None:
        state.raised = True
        state.since = self._clock.now()
        description = self._describe(gpu, "under")
        logger.warning("GPU memory low: %s", description)
        self._emit(EVENT_LOW, self._event_data(state, gpu))
        self._send(self._body("firing", gpu, description, starts_at=state.since, ends_at=None))

    # RAISED -> good
    def _clear(self, state: AlertState, gpu: GpuInfo) -> None:
        started_at = state.since or self._clock.now()
        ended_at = self._clock.now()
        state.raised = False
        state.since = None
        description = self._describe(gpu, "at or above")
        logger.warning("GPU memory recovered: %s", description)
        data = self._event_data(state, gpu)
        data["raised_at"] = iso_ms(started_at)
        self._emit(EVENT_RECOVERED, data)
        self._send(self._body("resolved", gpu, description, starts_at=started_at, ends_at=ended_at))

    def _describe(self, gpu: GpuInfo, relation: str) -> str:
        return (
            f"GPU {gpu.index} has {gpu.free_mib} MiB free of {gpu.total_mib} MiB, {relation} "
            f"the threshold of {self._threshold_text()}, for {self._samples} samples in a row"
        )

    def _threshold_text(self) -> str:
        parts = []
        if self._threshold_mib is not None:
            parts.append(f"{self._threshold_mib} MiB")
        if self._threshold_pct is not None:
            parts.append(f"{self._threshold_pct:g}% of total")
        return " or ".join(parts) or "none"

    def _event_data(self, state: AlertState, gpu: GpuInfo) -> dict[str, object]:
        return {
            "gpu": gpu.index,
            "free_mib": gpu.free_mib,
            "total_mib": gpu.total_mib,
            "threshold_mib": self._threshold_mib,
            "threshold_pct": self._threshold_pct,
            "samples": self._samples,
            "since": iso_ms(state.since) if state.since else None,
        }

    def _body(
        self,
        status: str,
        gpu: GpuInfo,
        description: str,
        *,
        starts_at: datetime,
        ends_at: datetime | None,
    ) -> dict[str, object]:
        summary = f"GPU {gpu.index} free memory {'low' if status == 'firing' else 'recovered'}"
        body: dict[str, object] = {
            "status": status,
            "labels": {"alertname": ALERT_NAME, "gpu": str(gpu.index), "severity": "warning"},
            "annotations": {"summary": summary, "description": description},
            "startsAt": iso_ms(starts_at),
        }
        if ends_at is not None:
            body["endsAt"] = iso_ms(ends_at)
        return body

    def _emit(self, kind: str, data: dict[str, object]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, data)
        except Exception:  # the event log's trouble must not stop the monitor
            logger.exception("GPU monitor on_event(%s) failed", kind)

    def _send(self, payload: dict[str, object]) -> None:
        for sink in self._sinks:
            task = asyncio.create_task(self._notify(sink, payload))
            self._notifications.add(task)
            task.add_done_callback(self._notifications.discard)

    async def _notify(self, sink: AlertSink, payload: dict[str, object]) -> None:
        try:
            await asyncio.wait_for(sink.notify(payload), timeout=self._sink_timeout_s)
        except Exception as exc:  # a sink that hangs or raises is bounded and logged
            logger.warning("alert sink %r failed: %s", sink, exc or type(exc).__name__)
