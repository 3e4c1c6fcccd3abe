"""The cluster section in quick mode, on the session's PostgreSQL: every figure present and
positive, nothing left running. Nothing about speed is asserted, except what a failover cannot
beat: the dead node's lease, renewed at most one heartbeat interval (NODE_TIMEOUT_S / 6) before
the kill, runs out no sooner than NODE_TIMEOUT_S - NODE_TIMEOUT_S / 6 after it. (Not
NODE_TIMEOUT_S itself: a kill just before a renewal fails over in less.)"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

from bench import cluster
from bench.harness import sweep_engines
from tests.pg_server import PgServer

CLOCK_SLACK_S = 0.01  # event times are written to the millisecond


def test_bench_cluster_quick_reports_every_figure(tmp_path: Path, pg_server: PgServer) -> None:
    run_id = uuid.uuid4().hex
    try:
        result = cluster.run(
            work_dir=tmp_path / "cluster", run_id=run_id, quick=True, seed=1, pg_server=pg_server
        )
    finally:
        leaked = sweep_engines(run_id)
    assert leaked == []
    assert result.status == "ok", result.reason
    assert isinstance(result.goal_met, bool)
    plan, figures = cluster.QUICK, result.figures

    listing = figures["list"]
    for side in cluster.SIDES:
        assert listing[side]["n"] == plan.list_requests, side
        assert 0 < listing[side]["median_ms"] <= listing[side]["p95_ms"], side
    assert listing["median_ratio"] > 0 and listing["p95_ratio"] > 0

    starts = figures["start"]
    for side in cluster.SIDES:
        for step in cluster.START_STEPS:
            assert starts[side][step]["n"] == plan.starts, (side, step)
            assert starts[side][step]["median_ms"] > 0, (side, step)
    assert math.isfinite(starts["added_median_ms"])

    failover = figures["failover"]
    timeout_s = failover["node_timeout_s"]
    assert timeout_s == plan.node_timeout_s
    assert len(failover["repeats"]) == plan.failovers
    for repeat in failover["repeats"]:
        assert math.isfinite(repeat["failover_s"]), repeat
        assert repeat["failover_s"] > timeout_s - timeout_s / 6, repeat
        assert repeat["start_s"] > 0, repeat
        assert repeat["renewal_to_kill_s"] >= -CLOCK_SLACK_S, repeat
        for step in ("lease_expired_to_taken_s", "taken_to_running_s"):
            assert repeat[step] >= -CLOCK_SLACK_S, (step, repeat)
        steps = (
            repeat["kill_to_lease_expired_s"]
            + repeat["lease_expired_to_taken_s"]
            + repeat["taken_to_running_s"]
        )
        assert math.isclose(steps, repeat["failover_s"], abs_tol=CLOCK_SLACK_S), repeat
    assert failover["bound_s"] > timeout_s
    assert failover["ratio_to_timeout_plus_start"] > 0

    metrics = [row.metric for row in result.rows]
    assert "start: PG's added ms (median PG - SQLite)" in metrics
    assert any(metric.startswith("failover median (s)") for metric in metrics)
