"""The cluster's costs: the shared store (one node on PostgreSQL against one orchestrator on
SQLite, both up at once, on the same machine and client) and failover between three nodes.

1. `GET /models` with `models` specs registered, one keep-alive client, the two sides
   alternating request by request (which side goes first swaps every request), so a drift of
   the machine weighs on both. On PostgreSQL every listing reads the shared tables (the other
   nodes' models as of now); on SQLite the orchestrator serves its own memory.
2. A start's own overhead: from just before `POST /models/{id}/start` to the transition to
   running (its event's `at`), on the fake engine with no load delay, stopped (`?wait=true`)
   between starts; the sides alternate, one unmeasured start each first.
3. Failover: three nodes on one PostgreSQL database (tests/cluster/nodes.py), a model started
   on the node that holds it, that node's orchestrator SIGKILLed, until the model's transition
   to running on another node. The lease the dead node last renewed (`GET /nodes`) splits it:
   kill -> lease expired (NODE_TIMEOUT_S less the time since the last renewal), -> taken (a
   live node's next heartbeat finds the orphan), -> running (one start). Bound: NODE_TIMEOUT_S
   + one heartbeat interval (NODE_TIMEOUT_S / 6) + the plain start measured in the same cluster.
   Between repeats the model is stopped and the killed node started again under its name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    RUN_ID_ENV,
    Orchestrator,
    epoch_s,
    fake_spec,
    orchestrator,
    running_at,
    wait_for,
)
from bench.report import Row, SectionResult, median, skipped, summary_ms
from tests.cluster.nodes import Cluster
from tests.pg_server import PgServer, PgServerError, find_bin_dir

NAME = "cluster"
TITLE = "cluster: the shared store (PostgreSQL vs SQLite) and failover between three nodes"
GOAL_LIST_RATIO = 3.0
GOAL_START_ADDED_MS = 50.0
GOAL_FAILOVER_SLACK_S = 0.5
NODES = ("a", "b", "c")
FAILOVER_MODEL = "failover-m"
SIDES = ("sqlite", "postgresql")
# From just before POST /models/{id}/start: its transition to starting, its 202, running.
START_STEPS = ("to_starting", "accepted", "to_running")


@dataclass(frozen=True)
class Plan:
    models: int
    list_requests: int  # measured per side
    starts: int  # measured per side
    node_timeout_s: float
    failovers: int


FULL = Plan(models=50, list_requests=300, starts=10, node_timeout_s=3.0, failovers=3)
QUICK = Plan(models=20, list_requests=40, starts=3, node_timeout_s=2.0, failovers=1)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def _summary(values_s: list[float]) -> dict[str, float | int]:
    return {**summary_ms(values_s), "p95_ms": round(_p95(values_s) * 1000, 2)}


def _turns(count: int) -> Iterator[tuple[str, str]]:
    """(sqlite, postgresql), (postgresql, sqlite), ...: each side first as often as the other."""
    for index in range(count):
        yield SIDES if index % 2 == 0 else (SIDES[1], SIDES[0])


@contextmanager
def _single_nodes(work_dir: Path, run_id: str, pg_url: str) -> Iterator[dict[str, Orchestrator]]:
    """One orchestrator on SQLite and one node on PostgreSQL, otherwise alike; on exit their
    models are stopped, then they are (the watchdog of the PostgreSQL node with them)."""
    with ExitStack() as stack:
        sides = {}
        for index, side in enumerate(SIDES):
            state_dir = work_dir / side
            url = f"sqlite:///{state_dir / 'gpu-orchestrator.db'}" if side == "sqlite" else pg_url
            ports = 31800 + 50 * index
            sides[side] = stack.enter_context(
                orchestrator(
                    state_dir,
                    run_id,
                    GPU_ORCH_DATABASE_URL=url,  # explicit: a --database=postgresql test run too
                    GPU_ORCH_NODE_NAME=f"solo-{side}",
                    GPU_ORCH_SIMULATED_GPUS="81920",
                    GPU_ORCH_PORT_RANGE_START=str(ports),
                    GPU_ORCH_PORT_RANGE_END=str(ports + 49),
                    # Every model is stopped by then; this also ends the node's watchdog.
                    GPU_ORCH_STOP_ENGINES_ON_SHUTDOWN="true",
                )
            )
        yield sides


def measure_listing(sides: dict[str, Orchestrator], plan: Plan) -> dict[str, list[float]]:
    """Seconds per `GET /models` (answer read in full) of each side, interleaved."""
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    warm_up = 10
    for index, order in enumerate(_turns(warm_up + plan.list_requests)):
        for side in order:
            began = time.perf_counter()
            response = sides[side].client.get("/models")
            elapsed = time.perf_counter() - began
            if response.status_code != 200 or len(response.json()) != plan.models:
                raise RuntimeError(f"{side}: GET /models {response.status_code}")
            if index >= warm_up:
                samples[side].append(elapsed)
    return samples


def _start_once(orch: Orchestrator, model_id: str) -> dict[str, float]:
    after = orch.last_event_id(model_id)
    began_wall, began = time.time(), time.perf_counter()
    orch.request("POST", f"/models/{model_id}/start")
    accepted = time.perf_counter() - began
    orch.wait_state(model_id, "running", interval_s=0.02)
    events = [e for e in orch.events(model_id) if e["id"] > after]
    orch.request("POST", f"/models/{model_id}/stop?wait=true")
    starting = next(e for e in events if e["kind"] == "transition" and e["to_state"] == "starting")
    return {
        "to_starting": epoch_s(starting["at"]) - began_wall,
        "accepted": accepted,
        "to_running": running_at(events) - began_wall,
    }


def measure_starts(sides: dict[str, Orchestrator], plan: Plan) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for index, order in enumerate(_turns(1 + plan.starts)):
        for side in order:
            sample = _start_once(sides[side], "m000")
            if index > 0:  # the first start of each side is unmeasured
                samples[side].append(sample)
    return samples


def _start_node(cluster: Cluster, name: str, run_id: str) -> None:
    engine_env = {"GPU_ORCH_TEST_RUN": cluster.marker(name), RUN_ID_ENV: run_id}
    cluster.start(name, GPU_ORCH_ENGINE_ENV=json.dumps(engine_env))


def _get(cluster: Cluster, via: str, path: str) -> Any:
    response = cluster.nodes[via].client.get(path)
    response.raise_for_status()
    return response.json()


def _all_alive(cluster: Cluster, via: str) -> Callable[[], bool]:
    def alive() -> bool:
        nodes = _get(cluster, via, "/nodes")
        return {node["name"] for node in nodes if node["alive"]} == set(NODES)

    return alive


def _event_at(events: list[dict[str, Any]], kind: str) -> float:
    return epoch_s(next(e["at"] for e in events if e["kind"] == kind))


def _events_path() -> str:
    return f"/models/{FAILOVER_MODEL}/events?limit=50"


def _start_where_held(cluster: Cluster) -> tuple[str, float]:
    """Start the model on the node that holds it (the first time: a); that node, and the
    start's seconds from the request to its transition to running."""
    owner = cluster.model("a", FAILOVER_MODEL)["status"]["node"] or "a"
    after = max((e["id"] for e in _get(cluster, owner, _events_path())), default=0)
    began = time.time()
    accepted = cluster.nodes[owner].client.post(f"/models/{FAILOVER_MODEL}/start")
    if accepted.status_code != 202 or accepted.json()["node"] != owner:
        raise RuntimeError(f"start on {owner}: {accepted.status_code} {accepted.text[:300]}")
    cluster.wait_running_on(FAILOVER_MODEL, via=owner)
    started = [e for e in _get(cluster, owner, _events_path()) if e["id"] > after]
    return owner, running_at(started) - began


def _kill_at_phase(cluster: Cluster, owner: str, via: str, phase: float) -> float:
    """SIGKILL `owner` `phase` of a heartbeat interval after one of its renewals; when."""

    def last_beat() -> str:
        nodes = {node["name"]: node for node in _get(cluster, via, "/nodes")}
        return str(nodes[owner]["last_heartbeat_at"])

    # The start itself made the owner heartbeat (its GPUs changed), so a kill right after it
    # would always come just after a renewal: the slowest case. A crash comes at any moment.
    seen = last_beat()
    wait_for(lambda: last_beat() != seen, 10, interval_s=0.01, what=f"a heartbeat of {owner}")
    time.sleep(phase * cluster.timeout_s / 6)  # where in the cycle the kill lands: the schedule
    killed_at = time.time()
    cluster.kill(owner)
    return killed_at


def _one_failover(cluster: Cluster, run_id: str, phase: float) -> dict[str, float]:
    """Start the model, SIGKILL its node, wait until it runs elsewhere; restart the node."""
    owner, start_s = _start_where_held(cluster)
    survivor = next(name for name in NODES if name != owner)
    wait_for(_all_alive(cluster, survivor), 30, interval_s=0.05, what="every node alive")
    after = max(e["id"] for e in _get(cluster, survivor, _events_path()))
    killed_at = _kill_at_phase(cluster, owner, survivor, phase)
    # The lease as the dead node last renewed it: final now, and read well before it expires.
    nodes = {node["name"]: node for node in _get(cluster, survivor, "/nodes")}
    [lease] = [m for m in nodes[owner]["models"] if m["id"] == FAILOVER_MODEL]
    expired_at = epoch_s(lease["lease_expires_at"])
    new_node = cluster.wait_running_on(
        FAILOVER_MODEL, via=survivor, exclude=owner, timeout_s=3 * cluster.timeout_s + 30
    )
    events = [e for e in _get(cluster, survivor, _events_path()) if e["id"] > after]
    running, taken_at = running_at(events), _event_at(events, "failover")
    cluster.nodes[new_node].client.post(f"/models/{FAILOVER_MODEL}/stop?wait=true")
    _start_node(cluster, owner, run_id)
    return {
        "start_s": start_s,
        "failover_s": running - killed_at,
        "renewal_to_kill_s": killed_at - epoch_s(nodes[owner]["last_heartbeat_at"]),
        "kill_to_lease_expired_s": expired_at - killed_at,
        "lease_expired_to_taken_s": taken_at - expired_at,
        "taken_to_running_s": running - taken_at,
    }


def measure_failovers(
    work_dir: Path, run_id: str, database_url: str, plan: Plan
) -> list[dict[str, float]]:
    """One failover per repeat, the kills spread evenly over the heartbeat cycle."""
    cluster = Cluster(work_dir / "nodes", database_url, timeout_s=plan.node_timeout_s)
    try:
        for name in NODES:
            _start_node(cluster, name, run_id)
        wait_for(_all_alive(cluster, "a"), 30, interval_s=0.05, what="every node alive")
        spec = fake_spec(FAILOVER_MODEL, gpu_memory_util=0.6)  # one engine per node
        cluster.nodes["a"].client.post("/models", json=spec).raise_for_status()
        phases = [(index + 0.5) / plan.failovers for index in range(plan.failovers)]
        return [_one_failover(cluster, run_id, phase) for phase in phases]
    finally:
        cluster.close()


def _listing_figures(samples: dict[str, list[float]]) -> dict[str, Any]:
    figures: dict[str, Any] = {side: _summary(values) for side, values in samples.items()}
    for stat in ("median_ms", "p95_ms"):
        ratio = figures["postgresql"][stat] / figures["sqlite"][stat]
        figures[f"{stat.removesuffix('_ms')}_ratio"] = round(ratio, 2)
    return figures


def _start_figures(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        side: {step: _summary([s[step] for s in found]) for step in START_STEPS}
        for side, found in samples.items()
    }
    medians = {side: median([s["to_running"] for s in found]) for side, found in samples.items()}
    figures["added_median_ms"] = round((medians["postgresql"] - medians["sqlite"]) * 1000, 1)
    figures["raw_to_running_ms"] = {
        side: [round(s["to_running"] * 1000, 1) for s in found] for side, found in samples.items()
    }
    return figures


def _failover_figures(repeats: list[dict[str, float]], timeout_s: float) -> dict[str, Any]:
    failovers = [r["failover_s"] for r in repeats]
    start_s = median([r["start_s"] for r in repeats])
    bound_s = timeout_s + timeout_s / 6 + start_s
    steps = (
        "renewal_to_kill_s",
        "kill_to_lease_expired_s",
        "lease_expired_to_taken_s",
        "taken_to_running_s",
    )
    return {
        "node_timeout_s": timeout_s,
        "heartbeat_interval_s": round(timeout_s / 6, 3),
        "repeats": [{key: round(value, 3) for key, value in r.items()} for r in repeats],
        "median_s": round(median(failovers), 3),
        "max_s": round(max(failovers), 3),
        "start_median_s": round(start_s, 3),
        "bound_s": round(bound_s, 3),
        "ratio_to_timeout_plus_start": round(median(failovers) / (timeout_s + start_s), 3),
        "ratio_to_bound": round(median(failovers) / bound_s, 3),
        "steps_median_s": {step: round(median([r[step] for r in repeats]), 3) for step in steps},
    }


def _versus(label: str, sides: dict[str, Any], *keys: str, digits: int = 1) -> Row:
    """A row of one figure, PostgreSQL's beside SQLite's (its baseline)."""

    def read(side: str) -> str:
        found = sides[side]
        for key in keys:
            found = found[key]
        return f"{found:.{digits}f}"

    return Row(f"{label}, PG vs SQLite", read("postgresql"), read("sqlite"))


def _rows(figures: dict[str, Any]) -> list[Row]:
    listing, starts, failover = figures["list"], figures["start"], figures["failover"]
    label = f"GET /models ({figures['models']} models)"
    added, ratio = starts["added_median_ms"], listing["median_ratio"]
    goal_s = failover["bound_s"] + GOAL_FAILOVER_SLACK_S
    steps = list(failover["steps_median_s"].values())[1:]  # from the kill on
    return [
        _versus(f"{label} median (ms)", listing, "median_ms", digits=2),
        _versus(f"{label} p95 (ms)", listing, "p95_ms", digits=2),
        Row(
            f"{label} median, PG / SQLite",
            f"{ratio:.2f}x",
            "",
            f"<= {GOAL_LIST_RATIO:g}x",
            ratio <= GOAL_LIST_RATIO,
        ),
        _versus("POST start -> starting recorded median (ms)", starts, "to_starting", "median_ms"),
        _versus("POST start answered median (ms)", starts, "accepted", "median_ms"),
        _versus("start -> running median (ms)", starts, "to_running", "median_ms"),
        Row(
            "start: PG's added ms (median PG - SQLite)",
            f"{added:+.1f}",
            "",
            f"<= +{GOAL_START_ADDED_MS:g}",
            added <= GOAL_START_ADDED_MS,
        ),
        Row(
            f"failover median (s), vs timeout {failover['node_timeout_s']:g} + T/6 + one start",
            f"{failover['median_s']:.2f}",
            f"{failover['bound_s']:.2f}",
        ),
        Row("failover / (timeout + one start)", f"{failover['ratio_to_timeout_plus_start']:.2f}"),
        Row(
            f"failover, worst of {len(failover['repeats'])} (s)",
            f"{failover['max_s']:.2f}",
            "",
            f"<= {goal_s:.2f} (bound + {GOAL_FAILOVER_SLACK_S:g})",
            failover["max_s"] <= goal_s,
        ),
        Row(
            "failover: kill -> lease expired -> taken -> running (s)",
            " / ".join(f"{step:.2f}" for step in steps),
        ),
    ]


@contextmanager
def _postgresql(server: PgServer | None) -> Iterator[PgServer]:
    """The server given (a test session's), or one started for this run and stopped after."""
    if server is not None:
        yield server
        return
    own = PgServer.start()
    try:
        yield own
    finally:
        own.stop()


def run(
    *, work_dir: Path, run_id: str, quick: bool, seed: int, pg_server: PgServer | None = None
) -> SectionResult:
    plan = QUICK if quick else FULL
    work_dir.mkdir(parents=True, exist_ok=True)
    if pg_server is None:
        try:
            find_bin_dir()
        except PgServerError as error:
            return skipped(NAME, TITLE, str(error))
    with _postgresql(pg_server) as server:
        single_url, cluster_url = server.create_database(), server.create_database()
        try:
            with _single_nodes(work_dir, run_id, single_url) as sides:
                for index in range(plan.models):
                    for orch in sides.values():
                        orch.create(fake_spec(f"m{index:03d}"))
                listing = measure_listing(sides, plan)
                starts = measure_starts(sides, plan)
            repeats = measure_failovers(work_dir, run_id, cluster_url, plan)
        finally:
            for url in (single_url, cluster_url):
                server.drop_database(url.rsplit("/", 1)[1])
    figures: dict[str, Any] = {
        "models": plan.models,
        "list_requests": plan.list_requests,
        "starts": plan.starts,
        "list": _listing_figures(listing),
        "start": _start_figures(starts),
        "failover": _failover_figures(repeats, plan.node_timeout_s),
    }
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{plan.models} specs; GET /models x {plan.list_requests} per side, alternating "
            f"request by request; {plan.starts} starts per side (fake engine, no load delay), "
            f"alternating; {plan.failovers} SIGKILL failovers of 3 nodes on PostgreSQL, "
            f"NODE_TIMEOUT_S {plan.node_timeout_s:g}"
        ),
        figures=figures,
        rows=_rows(figures),
    )
