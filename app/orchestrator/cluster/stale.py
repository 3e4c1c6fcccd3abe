"""Engines this node started that it no longer owns: after a failover, the node that comes back
finds its old engines still holding GPU memory, and stops them.

Every engine carries GPU_ORCH_CLUSTER (the database's cluster id), GPU_ORCH_NODE and
GPU_ORCH_LAUNCH_TOKEN in its environment, so the node finds its own even when the store no
longer records them (the new owner's status replaced the old one), and never another node's
or another cluster's (several nodes may share one host, as in the tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass

from app.orchestrator.launchers.base import EngineRecord, Launcher
from app.orchestrator.launchers.process import engines_with_env

logger = logging.getLogger(__name__)

CLUSTER_ENV = "GPU_ORCH_CLUSTER"
NODE_ENV = "GPU_ORCH_NODE"
MODEL_ENV = "GPU_ORCH_MODEL_ID"
TOKEN_ENV = "GPU_ORCH_LAUNCH_TOKEN"  # noqa: S105 (a variable name, not a secret)


@dataclass(frozen=True)
class StaleEngine:
    pid: int
    model_id: str
    launch_token: str


def node_engines(cluster_id: str, node: str) -> list[StaleEngine]:
    """The main processes (group leaders) of engines this node started in this cluster."""
    engines = engines_with_env({CLUSTER_ENV: cluster_id, NODE_ENV: node})
    return [
        StaleEngine(pid, environ.get(MODEL_ENV, "?"), environ[TOKEN_ENV])
        for pid, environ in engines
    ]


async def stop_stale_engines(
    launcher: Launcher,
    *,
    cluster_id: str,
    node: str,
    current_tokens: Collection[str],
    grace_s: float,
) -> list[StaleEngine]:
    """Stop this node's engines whose launch token no owned model records; return them."""
    engines = await asyncio.to_thread(node_engines, cluster_id, node)
    stale = [engine for engine in engines if engine.launch_token not in current_tokens]
    for engine in stale:
        logger.warning(
            "node %s: stopping engine pid %d of model %s: the model is owned elsewhere now",
            node,
            engine.pid,
            engine.model_id,
        )
        record = EngineRecord(
            pid=engine.pid,
            create_time=None,
            launch_token=engine.launch_token,
            launcher=launcher.name,
        )
        try:
            await launcher.clear_leftovers(record, grace_s=grace_s)
        except Exception:
            logger.exception("node %s: could not stop stale engine pid %d", node, engine.pid)
    return stale
