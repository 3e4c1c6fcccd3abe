"""Placement and the choice of orphans to fail over: pure functions over published figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.orchestrator.cluster.failover import orphans_for
from app.orchestrator.cluster.placement import place
from app.orchestrator.cluster.view import ClusterSnapshot
from app.orchestrator.spec import ModelSpec
from app.settings import Placement
from app.store.tables import LeaseRow, NodeRow, StatusRow

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GPU_MIB = 81920


def node(name: str, *free_mib: int, alive: bool = True, **gpu: Any) -> NodeRow:
    expires = NOW + timedelta(seconds=10 if alive else -1)
    gpus = [
        {"index": index, "total_mib": GPU_MIB, "free_mib": free, **gpu}
        for index, free in enumerate(free_mib)
    ]
    return NodeRow(
        name=name,
        url=f"http://{name}:8000",
        instance="i",
        pid=1,
        host=name,
        started_at=NOW,
        heartbeat_at=NOW,
        expires_at=expires,
        gpus=gpus,
    )


def spec(model_id: str = "m", **fields: Any) -> ModelSpec:
    return ModelSpec(id=model_id, model="/models/tiny", gpu_memory_util=0.4, **fields)


def choose(nodes: list[NodeRow], policy: Placement = Placement.SPREAD, **fields: Any) -> str | None:
    choice = place(spec(**fields), nodes, here="a", now=NOW, policy=policy, margin_mib=1024)
    return choice.node


def test_spread_takes_the_most_free_memory_and_binpack_the_least_that_fits() -> None:
    nodes = [node("a", 50000), node("b", 80000), node("c", 40000)]
    assert choose(nodes, Placement.SPREAD) == "b"
    # 0.4 x 81920 + 1024 = 33792 MiB needed: c fits with the least left over.
    assert choose(nodes, Placement.BINPACK) == "c"


def test_a_tie_stays_on_this_node_and_reservations_count() -> None:
    assert choose([node("b", 80000), node("a", 80000)]) == "a"
    assert choose([node("a", 80000, reserved_mib=60000), node("b", 80000)]) == "b"


def test_dead_nodes_low_memory_gpus_and_pins() -> None:
    assert choose([node("a", 10000), node("b", 80000, alive=False)]) is None
    assert choose([node("a", 80000, low_memory=True), node("b", 40000)]) == "b"
    assert choose([node("a", 80000), node("b", 40000)], node="b") == "b"
    choice = place(
        spec(node="z"),
        [node("a", 80000)],
        here="a",
        now=NOW,
        policy=Placement.SPREAD,
        margin_mib=1024,
    )
    assert choice.node is None and "z: no such node" in choice.reason


def test_a_refusal_names_every_node_and_why() -> None:
    choice = place(
        spec(),
        [node("a", 1000), node("b", 2000, alive=False)],
        here="a",
        now=NOW,
        policy=Placement.SPREAD,
        margin_mib=1024,
    )
    assert choice.node is None
    assert set(choice.refusals) == {"a", "b"} and choice.refusals["b"] == "not heartbeating"


def test_tensor_parallel_needs_that_many_fitting_gpus_on_one_node() -> None:
    nodes = [node("a", 80000), node("b", 80000, 80000)]
    assert choose(nodes, tensor_parallel_size=2) == "b"


def _snapshot(
    leases: dict[str, tuple[str, bool]],
    specs: list[ModelSpec],
    nodes: list[NodeRow],
    desired: str = "running",
) -> ClusterSnapshot:
    return ClusterSnapshot(
        now=NOW,
        specs={s.id: s for s in specs},
        statuses={
            s.id: StatusRow(model_id=s.id, since=NOW, desired_state=desired, state="running")
            for s in specs
        },
        leases={
            model_id: LeaseRow(
                model_id=model_id,
                node=holder,
                epoch=1,
                acquired_at=NOW,
                expires_at=NOW + timedelta(seconds=5 if live else -1),
            )
            for model_id, (holder, live) in leases.items()
        },
        nodes={row.name: row for row in nodes},
    )


def test_orphans_are_expired_leases_of_wanted_models_that_allow_failover() -> None:
    nodes = [node("a", 80000), node("b", 60000), node("lost", 80000, alive=False)]
    specs = [
        spec("gone", priority=1),
        spec("alive-elsewhere"),
        spec("no-failover", failover=False),
        spec("pinned-to-lost", node="lost"),
        spec("gone-low", priority=-1),
        spec("let-go"),  # no lease: a node that took it over had no room and let it go
    ]
    leases = {
        "gone": ("lost", False),
        "alive-elsewhere": ("b", True),
        "no-failover": ("lost", False),
        "pinned-to-lost": ("lost", False),
        "gone-low": ("lost", False),
    }
    snapshot = _snapshot(leases, specs, nodes)
    orphans = orphans_for(snapshot, here="a", policy=Placement.SPREAD, margin_mib=1024)
    # Highest priority first.
    assert [o.model_id for o in orphans] == ["gone", "let-go", "gone-low"]
    assert [o.lost_node for o in orphans] == ["lost", "?", "lost"]
    # b has less free memory: spread gives both to a, and b takes none of them.
    assert orphans_for(snapshot, here="b", policy=Placement.SPREAD, margin_mib=1024) == []
    stopped = _snapshot(leases, specs, nodes, desired="stopped")
    assert orphans_for(stopped, here="a", policy=Placement.SPREAD, margin_mib=1024) == []
