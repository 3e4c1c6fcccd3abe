"""This orchestrator as a node of the cluster: its name, its heartbeat, and when to stop acting.

`register` takes the node's row (one live process per node name: the single-instance rule of one
node, stated as a lease across nodes). The heartbeat renews the row and all the node's model
leases in one transaction every `NODE_TIMEOUT_S / 6`, and publishes the node's GPUs.

Self-fencing: the database extends a lease to `now + NODE_TIMEOUT_S` as of the renewal. This
node stops trusting its leases `2/3 * NODE_TIMEOUT_S` after it *sent* its last successful
renewal (by its own monotonic clock), which is before any other node may take them; it then
stops its engines (`on_fenced`). A node cut off from the database thus gives its models up before
anyone else starts them, and a network split never runs one model twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
from sqlalchemy import Engine

from app.orchestrator.cluster import watchdog
from app.settings import Settings
from app.store import cluster as store
from app.store.cluster import NodeClaim, NodeNameHeldError
from app.store.db import session_scope
from app.store.tables import NodeRow

logger = logging.getLogger(__name__)

__all__ = ["NodeMembership", "NodeNameHeldError"]

Hook = Callable[[], Awaitable[None]]


def _holder_alive(row: NodeRow) -> bool:
    """A live row's holder still runs, as far as this host can tell (another host: assume so)."""
    if row.host != socket.gethostname():
        return True
    return row.pid != os.getpid() and psutil.pid_exists(row.pid)


class NodeMembership:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        gpus: Callable[[], list[dict[str, Any]]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.ttl_s = settings.node_timeout_s
        self.interval_s = self.ttl_s / 6
        self.trust_s = self.ttl_s * 2 / 3
        self.claim = NodeClaim(
            name=settings.node_name,
            url=settings.node_url,
            instance=uuid.uuid4().hex,
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        self.gpus = gpus  # set by the wiring once the GPU allocator exists
        self._monotonic = monotonic
        self._valid_until = 0.0
        self.fenced = False
        self.cluster_id = ""
        # The watchdog (cluster/watchdog.py) stops this node's engines when renewals stop.
        self.state_dir = settings.state_dir
        self.heartbeat_file = settings.state_dir / watchdog.HEARTBEAT_FILE
        self.watchdog_grace_s = min(settings.stop_grace_s, self.ttl_s / 6)
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._publish = asyncio.Event()

    @property
    def name(self) -> str:
        return self.claim.name

    def publish_soon(self) -> None:
        """The GPUs changed (an engine placed or gone): heartbeat now, so other nodes place
        their next start by the new figures rather than those of up to an interval ago."""
        self._publish.set()

    def valid(self) -> bool:
        return not self.fenced and self._monotonic() < self._valid_until

    def register(self) -> None:
        """Take the node's name (NodeNameHeldError when a live process has it). Blocking."""
        sent = self._monotonic()
        with session_scope(self.engine) as session:
            store.register_node(
                session, self.claim, ttl_s=self.ttl_s, gpus=self.gpus(), holder_alive=_holder_alive
            )
            self.cluster_id = store.cluster_id(session)
        self._valid_until = sent + self.trust_s
        self.state_dir.mkdir(parents=True, exist_ok=True)
        watchdog.touch(self.heartbeat_file)

    def ensure_watchdog(self) -> None:
        """Start the node's watchdog unless this process's one still runs (one that another
        process started exits at once: it holds the node's lock)."""
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        self._watchdog = watchdog.spawn(
            self.state_dir,
            cluster_id=self.cluster_id,
            node=self.name,
            trust_s=self.trust_s,
            grace_s=self.watchdog_grace_s,
        )

    def stop_watchdog(self) -> None:
        """A clean exit that stops its engines needs no guard left behind."""
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.terminate()
            self._watchdog.wait(timeout=10)

    def _beat(self) -> bool:
        gpus = self.gpus()  # here, off the loop: NVML calls block
        with session_scope(self.engine) as session:
            return store.heartbeat(session, self.claim, ttl_s=self.ttl_s, gpus=gpus) is not None

    def leave(self) -> None:
        """Free the node's name for a successor (a clean exit). Blocking."""
        with session_scope(self.engine) as session:
            store.leave_node(session, self.claim)

    async def beat_once(self) -> bool | None:
        """One renewal: True renewed, False the name is another process's now, None failed."""
        sent = self._monotonic()
        try:
            renewed = await asyncio.to_thread(self._beat)
        except Exception as error:
            logger.warning("node %s: heartbeat failed: %s", self.name, error)
            return None
        if renewed:
            self._valid_until = sent + self.trust_s
            watchdog.touch(self.heartbeat_file)
        return renewed

    async def run(self, stop: asyncio.Event, *, fenced: Hook, recovered: Hook, beat: Hook) -> None:
        """Heartbeat until `stop`; call `fenced` when the leases can no longer be trusted,
        `recovered` when a renewal succeeds again, `beat` after every successful one."""
        while not stop.is_set():
            self._publish.clear()  # a change from here on is published by the next beat
            renewed = await self.beat_once()
            if renewed:
                self.ensure_watchdog()
            if renewed is False:
                logger.error("node %s: another process holds this node name now", self.name)
                self._valid_until = 0.0
            if renewed and self.fenced:
                self.fenced = False
                await recovered()
            if not self.fenced and not self.valid():
                logger.error("node %s: leases no longer renewed; stopping its engines", self.name)
                self.fenced = True
                await fenced()
            if renewed:
                try:
                    await beat()
                except Exception:  # the heartbeat must outlive a failed failover pass
                    logger.exception("node %s: after-heartbeat pass failed", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self._publish), self.interval_s)


async def _first(*events: asyncio.Event) -> None:
    """Return when any of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
