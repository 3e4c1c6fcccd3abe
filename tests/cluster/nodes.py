"""Several orchestrator processes on this machine as the nodes of one cluster: each its own
state directory, simulated GPUs and port range, all on one PostgreSQL database, and every fake
engine writing its own record of when it served (`--alive-log`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import live_engines_of
from tests.fakes import wait_until
from tests.lifecycle.orchestrator_process import OrchestratorProcess, orchestrator_process

TIMEOUT_S = 3.0  # GPU_ORCH_NODE_TIMEOUT_S of the test clusters: failover within seconds


@dataclass
class Cluster:
    root: Path
    database_url: str
    timeout_s: float = TIMEOUT_S
    nodes: dict[str, OrchestratorProcess] = field(default_factory=dict)
    _stacks: dict[str, ExitStack] = field(default_factory=dict)
    _ranges: dict[str, int] = field(default_factory=dict)

    @property
    def alive_log(self) -> Path:
        return self.root / "alive.jsonl"

    def marker(self, name: str) -> str:
        return str(self.root / name)

    def start(self, name: str, *, gpus: str = "81920", **env: str) -> OrchestratorProcess:
        """Start (or restart: same name, same state directory) node `name`."""
        base = self._ranges.setdefault(name, 28200 + 40 * len(self._ranges) + (os.getpid() % 50))
        state_dir = self.root / name
        state_dir.mkdir(parents=True, exist_ok=True)
        engine_env = {
            "GPU_ORCH_TEST_RUN": self.marker(name),
            "FAKE_ENGINE_ARGS": f"--alive-log {self.alive_log}",
        }
        values = {
            "GPU_ORCH_DATABASE_URL": self.database_url,
            "GPU_ORCH_NODE_NAME": name,
            "GPU_ORCH_NODE_TIMEOUT_S": str(self.timeout_s),
            "GPU_ORCH_SIMULATED_GPUS": gpus,
            "GPU_ORCH_PORT_RANGE_START": str(base),
            "GPU_ORCH_PORT_RANGE_END": str(base + 39),
            "GPU_ORCH_STOP_GRACE_S": "2",
            "GPU_ORCH_ENGINE_ENV": json.dumps(engine_env),
            **env,
        }
        stack = ExitStack()
        node = stack.enter_context(orchestrator_process(state_dir, **values))
        self._stacks[name] = stack
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """SIGKILL node `name`'s orchestrator (its engines and watchdog live on)."""
        self.nodes.pop(name).kill()
        self._stacks.pop(name).close()

    def close(self) -> None:
        for stack in self._stacks.values():
            stack.close()
        for pid in self.engines():
            _kill_group(pid)
        for pid in self.watchdogs():
            os.kill(pid, signal.SIGKILL)

    def engines(self, name: str | None = None) -> list[int]:
        """Live engine main processes of node `name` (of every node when None)."""
        names = [name] if name else list(self._ranges)
        return [pid for each in names for pid in live_engines_of(self.marker(each))]

    def watchdogs(self, name: str | None = None) -> list[int]:
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "app.orchestrator.cluster.watchdog" not in cmdline:
                continue
            state_dir = cmdline[cmdline.index("--state-dir") + 1]
            if Path(state_dir).parent == self.root and (name is None or state_dir.endswith(name)):
                found.append(process.info["pid"])
        return found

    def model(self, via: str, model_id: str) -> dict[str, Any]:
        response = self.nodes[via].client.get(f"/models/{model_id}")
        assert response.status_code == 200, (via, response.status_code, response.text)
        data: dict[str, Any] = response.json()
        return data

    def wait_running_on(
        self, model_id: str, *, via: str, exclude: str | None = None, timeout_s: float = 20.0
    ) -> str:
        """Wait until `via` sees the model running on a node (not `exclude`); that node."""
        seen: dict[str, Any] = {}

        def running() -> bool:
            seen.update(self.model(via, model_id)["status"])
            return seen["state"] == "running" and seen["node"] not in (None, exclude)

        try:
            wait_until(running, timeout_s, interval_s=0.05)
        except TimeoutError:
            events = self.nodes[via].client.get(f"/models/{model_id}/events").json()
            trail = [(e["kind"], e.get("to_state"), e["reason"][:120]) for e in events]
            raise TimeoutError(f"{model_id} not running elsewhere: {seen}; {trail}") from None
        return str(seen["node"])


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True)
class Served:
    model: str
    node: str
    pid: int
    first: float
    last: float


def served_intervals(alive_log: Path) -> list[Served]:
    """Each engine's serving time, from the engines' own ticks (every 50 ms while serving)."""
    spans: dict[int, Served] = {}
    if not alive_log.exists():
        return []
    for line in alive_log.read_text().splitlines():
        try:
            tick = json.loads(line)
        except ValueError:
            continue  # a line being written as the file was read
        pid = tick["pid"]
        known = spans.get(pid)
        if known is None:
            spans[pid] = Served(tick["model"], tick["node"], pid, tick["t"], tick["t"])
        else:
            spans[pid] = Served(known.model, known.node, pid, known.first, tick["t"])
    return sorted(spans.values(), key=lambda served: served.first)


def overlaps_across_nodes(alive_log: Path) -> list[tuple[Served, Served]]:
    """Pairs of engines of one model on two nodes that served at the same time."""
    spans = served_intervals(alive_log)
    return [
        (a, b)
        for index, a in enumerate(spans)
        for b in spans[index + 1 :]
        if a.model == b.model and a.node != b.node and a.first <= b.last and b.first <= a.last
    ]


def cluster_of(root: Path, database_url: str) -> Iterator[Cluster]:
    cluster = Cluster(root, database_url)
    try:
        yield cluster
    finally:
        cluster.close()
