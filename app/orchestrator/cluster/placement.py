"""Where a start goes: a pure choice among the live nodes' published GPU figures.

Each node's figures go through the same `decide` as a local start (headroom rule, margin,
low-memory gate), so a node is offered a model only when its own check would take it. Among the
nodes that fit, `spread` picks the most free memory left afterwards, `binpack` the least; ties
go to this node (no hop), then to the name. The chosen node's own allocator still has the last
word: figures are as of its last heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.orchestrator.gpu.headroom import decide, held_mib
from app.orchestrator.gpu.probe import GpuInfo, GpuSnapshot
from app.orchestrator.spec import ModelSpec
from app.settings import Placement
from app.store.tables import NodeRow


@dataclass(frozen=True)
class NodeChoice:
    node: str | None  # None: no node can take it
    reason: str
    refusals: dict[str, str]


def node_snapshot(row: NodeRow) -> tuple[GpuSnapshot, dict[int, int], frozenset[int]]:
    """A node's published GPUs as the headroom rule reads them."""
    gpus = tuple(_gpu(item) for item in row.gpus)
    reserved = {int(item["index"]): int(item.get("reserved_mib", 0)) for item in row.gpus}
    low = frozenset(int(item["index"]) for item in row.gpus if item.get("low_memory"))
    snapshot = GpuSnapshot(backend="published", available=bool(gpus), error="no GPU", gpus=gpus)
    return snapshot, reserved, low


def _gpu(item: dict[str, Any]) -> GpuInfo:
    total, free = int(item["total_mib"]), int(item["free_mib"])
    return GpuInfo(
        index=int(item["index"]),
        name=str(item.get("name", "")),
        uuid=str(item.get("uuid", "")),
        total_mib=total,
        free_mib=free,
        used_mib=total - free,
        utilization_pct=None,
    )


def place(
    spec: ModelSpec,
    nodes: list[NodeRow],
    *,
    here: str,
    now: datetime,
    policy: Placement,
    margin_mib: int,
    force: bool = False,
) -> NodeChoice:
    """The node a start of `spec` should run on, among the live `nodes` (pin respected)."""
    refusals: dict[str, str] = {}
    fits: list[tuple[int, str]] = []
    for row in nodes:
        if spec.node is not None and row.name != spec.node:
            continue
        if row.expires_at <= now:
            refusals[row.name] = "not heartbeating"
            continue
        snapshot, reserved, low = node_snapshot(row)
        decision = decide(
            snapshot,
            gpu_memory_util=spec.gpu_memory_util,
            tensor_parallel_size=spec.tensor_parallel_size,
            margin_mib=margin_mib,
            reserved_mib_by_gpu=reserved,
            low_memory_gpus=low,
            force=force,
        )
        if not decision.ok:
            refusals[row.name] = decision.reason
            continue
        left = sum(g.free_mib - reserved.get(g.index, 0) for g in snapshot.gpus) - sum(
            held_mib(spec.gpu_memory_util, g.total_mib)
            for g in snapshot.gpus
            if g.index in decision.gpu_ids
        )
        fits.append((left, row.name))
    if not fits:
        if spec.node is not None and spec.node not in refusals:
            refusals[spec.node] = "no such node has joined the cluster"
        reason = "; ".join(f"{name}: {why}" for name, why in sorted(refusals.items()))
        return NodeChoice(None, reason or "no node has joined the cluster", refusals)
    sign = -1 if policy is Placement.SPREAD else 1
    left, name = min(fits, key=lambda fit: (sign * fit[0], fit[1] != here, fit[1]))
    pinned = " (pinned)" if spec.node is not None else ""
    reason = f"{policy.value}: node {name}{pinned} has {left} MiB free after the start"
    return NodeChoice(name, reason, refusals)
