"""The node's watchdog: a small process beside the orchestrator that stops the node's engines
when the orchestrator stops renewing its leases, whatever the reason (it crashed, it hangs, it
is cut off from the database).

Without it, an orchestrator killed by SIGKILL leaves its engines serving while, NODE_TIMEOUT_S
later, another node starts the same models: one model on two nodes. The orchestrator touches
`<state dir>/node-heartbeat` after every renewal the database accepted; the watchdog, in its own
session so it outlives the orchestrator, stops every engine of this node and cluster (found by
their environment, as cluster/stale.py does) once that file is older than the orchestrator's own
trust window (2/3 of NODE_TIMEOUT_S), and exits. An orchestrator restarted within the window
finds its engines untouched and its watchdog still on guard; a later one starts a new watchdog.
One watchdog per node: it holds an flock on `<state dir>/node-watchdog.lock`.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.orchestrator.cluster.stale import node_engines
from app.orchestrator.launchers.process import group_members, signal_group

logger = logging.getLogger(__name__)

HEARTBEAT_FILE = "node-heartbeat"
LOCK_FILE = "node-watchdog.lock"


def touch(path: Path) -> None:
    """Record a renewal the database accepted (the file's mtime is the record)."""
    path.touch()
    os.utime(path)


def spawn(
    state_dir: Path, *, cluster_id: str, node: str, trust_s: float, grace_s: float
) -> subprocess.Popen[bytes]:
    """Start the watchdog in a session of its own (it exits at once if one already guards)."""
    argv = [
        sys.executable,
        "-m",
        "app.orchestrator.cluster.watchdog",
        "--state-dir",
        str(state_dir),
        "--cluster",
        cluster_id,
        "--node",
        node,
        "--trust-s",
        str(trust_s),
        "--grace-s",
        str(grace_s),
    ]
    log = (state_dir / "node-watchdog.log").open("ab")
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    finally:
        log.close()


def _stale_for(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def stop_engines(cluster_id: str, node: str, grace_s: float) -> list[int]:
    """SIGTERM every engine group of this node and cluster, SIGKILL what is left after grace_s."""
    engines = node_engines(cluster_id, node)
    for engine in engines:
        signal_group(engine.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_members(e.pid) for e in engines):
        time.sleep(0.05)
    for engine in engines:
        if group_members(engine.pid):
            signal_group(engine.pid, signal.SIGKILL)
    return [engine.pid for engine in engines]


def guard(state_dir: Path, *, cluster_id: str, node: str, trust_s: float, grace_s: float) -> int:
    lock = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another watchdog guards this node already
    heartbeat = state_dir / HEARTBEAT_FILE
    check_s = max(trust_s / 20, 0.05)
    while _stale_for(heartbeat) < trust_s:
        time.sleep(check_s)
    stopped = stop_engines(cluster_id, node, grace_s)
    logger.warning(
        "node %s: no lease renewal for %.1f s: stopped engines %s", node, trust_s, stopped
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--trust-s", type=float, required=True)
    parser.add_argument("--grace-s", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return guard(
        args.state_dir,
        cluster_id=args.cluster,
        node=args.node,
        trust_s=args.trust_s,
        grace_s=args.grace_s,
    )


if __name__ == "__main__":
    sys.exit(main())
