"""Swaps: two models that do not fit together on one simulated GPU (80 GiB, gpu_memory_util 0.6
each), asked for in turn through the gateway, each request for the one that is not loaded.

Stop-and-start (no sleep_level: the eviction stops the other engine) and sleep-and-wake
(sleep_level 1 on both: the eviction puts the other to sleep, the request wakes its own), each
on its own orchestrator, each beside the same swap done bare on the same fake engine
(bench/swap_sides.py). The orchestrator's share of a swap = median through the gateway - median
bare. The four sides take turns, in an order that rotates every round, after one unmeasured
round. In the full run, with vLLM's CPU build at hand, the same stop-and-start swap on the real
engine (vLLM's CPU build has no sleep mode) is measured beside them (bench/swap_vllm.py).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Orchestrator, fake_spec, kill_group, orchestrator
from bench.report import Row, SectionResult, median, summary_ms
from bench.swap_sides import (
    SLEEP_ENV,
    BareEngine,
    KeptAlive,
    bare_sleep_wake,
    bare_stop_start,
    gateway_sleep_wake,
    gateway_stop_start,
    spawn_bare,
    wait_answering,
)
from bench.swap_vllm import measure_vllm_swaps

NAME = "swap"
TITLE = "model swap through the gateway: stop-and-start vs sleep-and-wake (fake engine)"
GOAL_ADDED_MS = 50.0
GPU_MIB = 81920
GPU_MEMORY_UTIL = 0.6  # x 80 GiB + the 1 GiB margin: two never fit on one GPU together
STOP_START, SLEEP_WAKE = "stop_start", "sleep_wake"
Sample = dict[str, float]


@dataclass(frozen=True)
class Plan:
    rounds: int
    ready_delay_s: float


FULL, QUICK = Plan(rounds=20, ready_delay_s=0.5), Plan(rounds=3, ready_delay_s=0.3)


def _flags(ready_delay_s: float, record: Path | None = None) -> list[str]:
    flags = ["--tcp-nodelay", "--ready-delay-s", f"{ready_delay_s:g}"]
    return [*flags, "--record", str(record)] if record is not None else flags


def _other(pair: tuple[str, str], model_id: str) -> str:
    return pair[1] if model_id == pair[0] else pair[0]


def _ask(orch: Orchestrator, model_id: str) -> None:
    body = {"model": model_id, "prompt": "x", "max_tokens": 1}
    response = orch.client.post("/v1/completions", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{model_id}: {response.status_code} {response.text[:300]}")


class StopStart:
    """Both stop-and-start sides, each with one of its two models loaded."""

    pair = ("cold-a", "cold-b")

    def __init__(self, orch: Orchestrator, work_dir: Path, run_id: str, delay_s: float) -> None:
        self.orch, self.work_dir, self.run_id, self.delay_s = orch, work_dir, run_id, delay_s
        for model_id in self.pair:
            flags = shlex.join(_flags(delay_s, self._record("gateway", model_id)))
            env = {"FAKE_ENGINE_ARGS": flags}
            orch.create(fake_spec(model_id, gpu_memory_util=GPU_MEMORY_UTIL, env=env))
        _ask(orch, self.pair[0])  # a cold start with nothing to evict
        self.loaded = self.pair[0]
        self.bare: BareEngine = self._spawn(self.pair[0])
        wait_answering(self.bare)

    def _record(self, side: str, model_id: str) -> Path:
        return self.work_dir / f"{side}-{model_id}.json"

    def _spawn(self, model_id: str) -> BareEngine:
        flags = _flags(self.delay_s, self._record("bare", model_id))
        return spawn_bare(model_id, flags, self.work_dir / "bare.log", self.run_id, {})

    def gateway(self) -> Sample:
        target = _other(self.pair, self.loaded)
        record = self._record("gateway", target)
        sample = gateway_stop_start(self.orch, target, self.loaded, record)
        self.loaded = target
        return sample

    def bare_swap(self) -> Sample:
        target = _other(self.pair, self.bare.model_id)
        flags = _flags(self.delay_s, self._record("bare", target))
        log_path = self.work_dir / "bare.log"
        sample, self.bare = bare_stop_start(self.bare, target, flags, log_path, self.run_id)
        return sample

    def close(self) -> None:
        kill_group(self.bare.process, grace_s=5)


class SleepWake:
    """Both sleep-and-wake sides, each with one model awake and the other asleep."""

    pair = ("dozy-a", "dozy-b")

    def __init__(self, orch: Orchestrator, work_dir: Path, run_id: str, delay_s: float) -> None:
        self.orch = orch
        env = {"FAKE_ENGINE_ARGS": shlex.join(_flags(delay_s))}
        for model_id in self.pair:
            spec = fake_spec(model_id, gpu_memory_util=GPU_MEMORY_UTIL, sleep_level=1, env=env)
            orch.create(spec)
        # Both started through the gateway, the second start putting the first to sleep.
        for model_id in self.pair:
            _ask(orch, model_id)
        orch.wait_state(self.pair[0], "sleeping")
        self.awake = self.pair[1]
        flags = [*_flags(delay_s), "--enable-sleep-mode"]
        log_path = work_dir / "bare-sleep.log"
        self.bare = {m: spawn_bare(m, flags, log_path, run_id, SLEEP_ENV) for m in self.pair}
        self.connections: dict[str, KeptAlive] = {}
        for model_id, engine in self.bare.items():
            wait_answering(engine)
            self.connections[model_id] = KeptAlive(engine.port)
        self.connections[self.pair[0]].post("/sleep?level=1")
        self.bare_awake = self.pair[1]

    def gateway(self) -> Sample:
        target = _other(self.pair, self.awake)
        sample = gateway_sleep_wake(self.orch, target, self.awake)
        self.awake = target
        return sample

    def bare_swap(self) -> Sample:
        victim, target = self.bare_awake, _other(self.pair, self.bare_awake)
        url = self.bare[target].completions_url
        sample = bare_sleep_wake(self.connections[victim], self.connections[target], url, target)
        self.bare_awake = target
        return sample

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        for engine in self.bare.values():
            kill_group(engine.process, grace_s=5)


def _orchestrator(stack: ExitStack, state_dir: Path, run_id: str, ports: int) -> Orchestrator:
    return stack.enter_context(
        orchestrator(
            state_dir,
            run_id,
            GPU_ORCH_SIMULATED_GPUS=str(GPU_MIB),
            GPU_ORCH_PORT_RANGE_START=str(ports),
            GPU_ORCH_PORT_RANGE_END=str(ports + 49),
        )
    )


def measure_fake_swaps(
    work_dir: Path, run_id: str, plan: Plan
) -> dict[str, dict[str, list[Sample]]]:
    """Samples of every side, by swap kind then side ("gateway", "bare")."""
    samples: dict[str, dict[str, list[Sample]]] = {
        kind: {"gateway": [], "bare": []} for kind in (STOP_START, SLEEP_WAKE)
    }
    with ExitStack() as stack:
        stop_orch = _orchestrator(stack, work_dir / "stop-state", run_id, 31700)
        sleep_orch = _orchestrator(stack, work_dir / "sleep-state", run_id, 31750)
        stop_start = StopStart(stop_orch, work_dir, run_id, plan.ready_delay_s)
        stack.callback(stop_start.close)
        sleep_wake = SleepWake(sleep_orch, work_dir, run_id, plan.ready_delay_s)
        stack.callback(sleep_wake.close)
        sides: list[tuple[str, str, Callable[[], Sample]]] = [
            (STOP_START, "gateway", stop_start.gateway),
            (SLEEP_WAKE, "bare", sleep_wake.bare_swap),
            (STOP_START, "bare", stop_start.bare_swap),
            (SLEEP_WAKE, "gateway", sleep_wake.gateway),
        ]
        for round_index in range(plan.rounds + 1):  # round 0 is the unmeasured one
            shift = round_index % len(sides)
            for kind, side, swap in sides[shift:] + sides[:shift]:
                sample = swap()
                if round_index > 0:
                    samples[kind][side].append(sample)
    return samples


def _summarise(sides: dict[str, list[Sample]]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        side: {step: summary_ms([s[step] for s in found]) for step in found[0]}
        for side, found in sides.items()
    }
    totals = {side: median([s["total"] for s in found]) for side, found in sides.items()}
    figures["added_median_ms"] = round((totals["gateway"] - totals["bare"]) * 1000, 1)
    figures["raw_total_ms"] = {
        side: [round(s["total"] * 1000, 1) for s in found] for side, found in sides.items()
    }
    return figures


def _steps_outside_start_ms(figures: dict[str, Any]) -> float:
    """The stop-and-start share from its steps: every step but the engine's start (spawn to
    listening, which holds the load and the interpreter's start-up: the noisiest), less the
    bare side's own stop and first answer."""
    gateway, bare = figures["gateway"], figures["bare"]
    ours = ("to_victim_stopped", "stopped_to_starting", "listening_to_running", "running_to_answer")
    engine = ("stop", "listening_to_answer")
    total = sum(gateway[step]["median_ms"] for step in ours)
    return round(float(total - sum(bare[step]["median_ms"] for step in engine)), 1)


def _rows(figures: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind, label in ((STOP_START, "stop-and-start"), (SLEEP_WAKE, "sleep-and-wake")):
        found = figures[kind]
        added = float(found["added_median_ms"])
        gateway_ms = found["gateway"]["total"]["median_ms"]
        bare_ms = found["bare"]["total"]["median_ms"]
        rows.append(Row(f"{label} swap, median (ms)", f"{gateway_ms:.1f}", f"{bare_ms:.1f}"))
        goal = f"<= {GOAL_ADDED_MS:g}"
        verdict = added <= GOAL_ADDED_MS
        rows.append(
            Row(f"{label}: the orchestrator's share (ms)", f"{added:.1f}", "", goal, verdict)
        )
    steps_ms = figures[STOP_START]["steps_outside_start_ms"]
    rows.append(Row("stop-and-start: its steps outside the engine's start (ms)", f"{steps_ms:.1f}"))
    ratio = figures["stop_start_over_sleep_wake"]
    rows.append(Row("stop-and-start / sleep-and-wake (gateway)", f"{ratio:.1f}x"))
    vllm = figures["vllm_cpu"]
    if vllm["status"] == "ok":
        median_s = vllm["median_swap_s"]
        rows.append(Row("vLLM CPU stop-and-start swap, median (s)", f"{median_s:.2f}"))
    else:
        rows.append(Row("vLLM CPU stop-and-start swap", "skipped", vllm["reason"]))
    return rows


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    plan = QUICK if quick else FULL
    work_dir.mkdir(parents=True, exist_ok=True)
    samples = measure_fake_swaps(work_dir, run_id, plan)
    figures: dict[str, Any] = {"rounds": plan.rounds, "ready_delay_s": plan.ready_delay_s}
    for kind, sides in samples.items():
        figures[kind] = _summarise(sides)
    figures[STOP_START]["steps_outside_start_ms"] = _steps_outside_start_ms(figures[STOP_START])
    figures["stop_start_over_sleep_wake"] = round(
        figures[STOP_START]["gateway"]["total"]["median_ms"]
        / figures[SLEEP_WAKE]["gateway"]["total"]["median_ms"],
        1,
    )
    figures["vllm_cpu"] = measure_vllm_swaps(
        work_dir / "vllm",
        run_id,
        quick=quick,
        engine_python=os.environ.get("GPU_ORCH_TEST_ENGINE_PYTHON"),
        tiny_model=os.environ.get("GPU_ORCH_TEST_TINY_MODEL"),
    )
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{plan.rounds} rounds of 4 sides in rotating order after one unmeasured round; "
            f"fake engine load {plan.ready_delay_s:g} s; share = median gateway - median bare"
        ),
        figures=figures,
        rows=_rows(figures),
    )
