"""Three orchestrator processes, each a node with its own simulated GPU and fake engines, on one
real PostgreSQL database: placement, forwarding, the gateway across nodes, failover after a node
dies or is cut off, and never one model serving on two nodes, judged from the engines' own
records (every fake engine ticks into one file while it serves)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from sqlalchemy.engine import make_url

from app.client_events import parse_sse
from tests.api.live_server import sse_headers
from tests.api.test_events_api import events_of, has
from tests.cluster.nodes import Cluster, cluster_of, overlaps_across_nodes, served_intervals
from tests.cluster.tcp_proxy import TcpProxy
from tests.fakes import wait_until
from tests.lifecycle.orchestrator_process import SERVE, orchestrator_env

# 0.6 of a GPU: one engine per node, so where a model lands is decided by placement alone.
SPEC: dict[str, Any] = {"model": "/models/tiny", "gpu_memory_util": 0.6}


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path, pg_url)


def _nodes_alive(cluster: Cluster, via: str, names: set[str]) -> bool:
    nodes = cluster.nodes[via].client.get("/nodes").json()
    return {node["name"] for node in nodes if node["alive"]} == names


def _published_free(cluster: Cluster, via: str, name: str) -> int:
    nodes = {node["name"]: node for node in cluster.nodes[via].client.get("/nodes").json()}
    return int(nodes[name]["free_mib"])


def test_placement_forwarding_and_the_gateway_across_three_nodes(cluster: Cluster) -> None:
    for name in ("a", "b", "c"):
        cluster.start(name)
    a, b, c = (cluster.nodes[name] for name in ("a", "b", "c"))
    wait_until(lambda: _nodes_alive(cluster, "b", {"a", "b", "c"}), 10)
    for model_id in ("m1", "m2", "m3"):
        assert a.client.post("/models", json={"id": model_id, **SPEC}).status_code == 201
    assert a.client.post("/models", json={"id": "pinned", **SPEC, "node": "c"}).status_code == 201

    # Spread, all nodes empty: the tie stays on the node asked.
    started = a.client.post("/models/m1/start")
    assert started.status_code == 202 and started.json()["node"] == "a"
    assert cluster.wait_running_on("m1", via="a") == "a"
    wait_until(lambda: _published_free(cluster, "b", "a") < 81920 * 0.5, 10)

    # a is full now: its start goes to b (the tie between b and c goes by name), and says so.
    placed = a.client.post("/models/m2/start")
    assert placed.status_code == 202, placed.text
    assert placed.headers["x-gpu-orch-node"] == "b" and placed.json()["node"] == "b"
    assert cluster.wait_running_on("m2", via="c") == "b"

    # Any node's API serves the whole cluster: c lists every model with its node.
    listed = {m["id"]: m["status"] for m in c.client.get("/models").json()}
    assert (listed["m1"]["node"], listed["m1"]["state"]) == ("a", "running")
    assert (listed["m2"]["node"], listed["m2"]["state"]) == ("b", "running")
    assert listed["m3"]["state"] == "stopped"

    # The gateway of c answers for a's model, through a (the official SDK as the client).
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", max_retries=0)
    raw = client.completions.with_raw_response.create(model="m1", prompt="hello", max_tokens=4)
    assert raw.http_response.headers["x-gpu-orch-node"] == "a"
    assert raw.parse().choices[0].text
    names = {model.id for model in client.models.list()}
    assert {"m1", "m2", "m3", "pinned"} <= names
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nobody", prompt="hello")

    # A command for b's model, sent to c, is carried out by b.
    stopped = c.client.post("/models/m2/stop?wait=true")
    assert stopped.status_code == 202 and stopped.headers["x-gpu-orch-node"] == "b"
    assert stopped.json()["state"] == "stopped"
    assert cluster.engines("b") == []

    # A pinned model starts on its node whoever is asked.
    pinned = b.client.post("/models/pinned/start")
    assert pinned.status_code == 202 and pinned.json()["node"] == "c"
    assert cluster.wait_running_on("pinned", via="a") == "c"

    # A cold start through b's gateway (m3 is a's, a places it): b is the empty node now.
    wait_until(lambda: _published_free(cluster, "a", "b") == 81920, 10)
    wait_until(lambda: _published_free(cluster, "a", "c") < 81920 * 0.5, 10)
    answer = openai.OpenAI(base_url=f"{b.url}/v1", api_key="x", max_retries=0)
    assert answer.completions.create(model="m3", prompt="hi", max_tokens=2).choices
    assert cluster.model("a", "m3")["status"]["node"] == "b"

    nodes = {node["name"]: node for node in a.client.get("/nodes").json()}
    assert [m["id"] for m in nodes["a"]["models"]] == ["m1"]
    assert {m["id"] for m in nodes["b"]["models"]} >= {"m3"}
    assert [g["total_mib"] for g in nodes["c"]["gpus"]] == [81920]
    assert all(node["alive"] and node["last_heartbeat_at"] for node in nodes.values())
    assert overlaps_across_nodes(cluster.alive_log) == []

    listing = subprocess.run(
        [sys.executable, "-m", "app.cli", "nodes", "--url", c.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert set(rows) == {"a", "b", "c"} and "m1 (running)" in rows["a"]
    assert all(" yes " in row for row in rows.values())


def _start_on(cluster: Cluster, node: str, model_id: str) -> float:
    """Create and start the model on `node`; how long the start took."""
    api = cluster.nodes[node].client
    assert api.post("/models", json={"id": model_id, **SPEC}).status_code == 201
    began = time.monotonic()
    assert api.post(f"/models/{model_id}/start").json()["node"] == node
    cluster.wait_running_on(model_id, via=node)
    return time.monotonic() - began


def _failover_bound(cluster: Cluster, start_s: float) -> float:
    # NODE_TIMEOUT_S, then a heartbeat interval for a node to notice, then one start (slack for
    # a loaded machine: the engine's own start time, doubled, and a second).
    return cluster.timeout_s + cluster.timeout_s / 6 + 2 * start_s + 1.0


def test_a_killed_node_fails_over_within_the_timeout_and_never_runs_twice(
    cluster: Cluster,
) -> None:
    """SIGKILL of a's orchestrator: its watchdog stops its engine before the lease can expire,
    b or c starts the model, and a, restarted, owns nothing of it."""
    for name in ("a", "b", "c"):
        cluster.start(name)
    wait_until(lambda: _nodes_alive(cluster, "b", {"a", "b", "c"}), 10)
    start_s = _start_on(cluster, "a", "m1")
    [old_engine] = cluster.engines("a")

    killed_at = time.monotonic()
    cluster.kill("a")
    new_node = cluster.wait_running_on("m1", via="b", exclude="a", timeout_s=30)
    took_s = time.monotonic() - killed_at
    assert took_s <= _failover_bound(cluster, start_s), (took_s, start_s)
    assert not psutil_alive(old_engine)  # stopped by a's watchdog, not by anyone's luck
    assert overlaps_across_nodes(cluster.alive_log) == []

    events = cluster.nodes["b"].client.get("/models/m1/events").json()
    [failover] = [event for event in events if event["kind"] == "failover"]
    assert failover["data"] == {"from_node": "a", "to_node": new_node}
    metrics = cluster.nodes[new_node].client.get("/metrics").text
    assert 'gpu_orchestrator_failovers_total{from_node="a",model="m1"} 1.0' in metrics

    returned = cluster.start("a")  # the node comes back under its name
    assert cluster.model("a", "m1")["status"]["node"] == new_node
    nodes = {node["name"]: node for node in returned.client.get("/nodes").json()}
    assert nodes["a"]["alive"] and nodes["a"]["models"] == []
    assert cluster.engines("a") == []
    assert overlaps_across_nodes(cluster.alive_log) == []


def psutil_alive(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent here may never reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_hung_node_is_failed_over_and_stops_its_stale_engine_when_it_returns(
    cluster: Cluster,
) -> None:
    """A node that hangs: its orchestrator and watchdog gone, its engine frozen (SIGSTOP)
    holding its GPU. The model fails over; the returning node finds the stale engine and
    stops it, and the engine never served again."""
    for name in ("a", "b"):
        cluster.start(name)
    wait_until(lambda: _nodes_alive(cluster, "b", {"a", "b"}), 10)
    _start_on(cluster, "a", "m1")
    [stale] = cluster.engines("a")
    for pid in cluster.watchdogs("a"):
        os.kill(pid, signal.SIGKILL)
    os.killpg(stale, signal.SIGSTOP)
    frozen_at = time.time()
    cluster.kill("a")
    assert cluster.wait_running_on("m1", via="b", exclude="a", timeout_s=30) == "b"

    returned = cluster.start("a")

    def stale_stopped() -> bool:
        events = returned.client.get("/models/m1/events").json()
        return any(
            e["kind"] == "stale_engine_stopped" and e["data"]["pid"] == stale for e in events
        )

    wait_until(stale_stopped, 15, what="the stale engine stopped, and said so")
    assert not psutil_alive(stale)
    spans = {span.pid: span for span in served_intervals(cluster.alive_log)}
    assert spans[stale].last < frozen_at + 0.1  # it never served again
    assert overlaps_across_nodes(cluster.alive_log) == []
    assert cluster.model("b", "m1")["status"]["node"] == "b"


def test_a_node_cut_off_from_the_database_stops_its_engines_before_others_start_them(
    cluster: Cluster, pg_url: str
) -> None:
    """A network split between node c and PostgreSQL: c can no longer renew, so it stops its
    engine within 2/3 of the timeout; a takes the model after the lease expired; once the
    network heals c rejoins and owns nothing."""
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    cut_url = url.set(port=proxy.port).render_as_string(hide_password=False)
    cluster.start("a")
    cluster.start("c", GPU_ORCH_DATABASE_URL=cut_url)
    wait_until(lambda: _nodes_alive(cluster, "a", {"a", "c"}), 10)
    _start_on(cluster, "c", "m1")
    [engine] = cluster.engines("c")

    proxy.cut()
    assert cluster.wait_running_on("m1", via="a", exclude="c", timeout_s=30) == "a"
    assert not psutil_alive(engine)
    assert overlaps_across_nodes(cluster.alive_log) == []
    assert cluster.nodes["c"].client.get("/healthz").status_code == 200  # alive, just cut off

    proxy.heal()
    wait_until(lambda: _nodes_alive(cluster, "a", {"a", "c"}), 15, what="c rejoined")
    nodes = {node["name"]: node for node in cluster.nodes["a"].client.get("/nodes").json()}
    assert nodes["c"]["models"] == [] and cluster.engines("c") == []
    assert cluster.model("c", "m1")["status"]["node"] == "a"
    proxy.cut()


def test_a_second_process_with_a_live_node_name_is_refused(cluster: Cluster) -> None:
    cluster.start("a")
    env = orchestrator_env(
        cluster.root / "a-again",
        GPU_ORCH_DATABASE_URL=cluster.database_url,
        GPU_ORCH_NODE_NAME="a",
    )
    (cluster.root / "a-again").mkdir()
    refused = subprocess.run(
        [*SERVE, "--port", "1"], env=env, capture_output=True, timeout=60, check=False
    )
    assert refused.returncode == 4
    assert b"another gpu-orchestrator is node a: pid" in refused.stderr
    assert cluster.nodes["a"].client.get("/healthz").status_code == 200


def _heartbeat_of(cluster: Cluster, via: str, name: str) -> str:
    nodes = {node["name"]: node for node in cluster.nodes[via].client.get("/nodes").json()}
    return str(nodes[name]["last_heartbeat_at"])


def test_a_model_without_failover_waits_for_its_node_and_requests_name_it(
    cluster: Cluster,
) -> None:
    """failover: false. While a's lease is live, a command sent to b names the node that does
    not answer; once it lapsed nobody moves the model on their own, and an operator's start
    on b takes it over."""
    for name in ("a", "b"):
        cluster.start(name)
    wait_until(lambda: _nodes_alive(cluster, "b", {"a", "b"}), 10)
    api = cluster.nodes["a"].client
    assert api.post("/models", json={"id": "m1", **SPEC, "failover": False}).status_code == 201
    api.post("/models/m1/start")
    cluster.wait_running_on("m1", via="a")
    cluster.kill("a")
    b = cluster.nodes["b"].client
    answer = b.post("/models/m1/stop")
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"]["node"] == "a"
    assert answer.json()["detail"]["code"] == "node_unavailable"

    wait_until(lambda: _nodes_alive(cluster, "b", {"b"}), 10, what="a lost")
    for _beat in range(2):  # two of b's heartbeats, each followed by its failover pass
        before = _heartbeat_of(cluster, "b", "b")
        wait_until(lambda: _heartbeat_of(cluster, "b", "b") != before, 10)  # noqa: B023
    status = cluster.model("b", "m1")["status"]
    assert (status["node"], status["desired_state"]) == ("a", "running")
    events = b.get("/models/m1/events").json()
    assert not any(event["kind"] == "failover" for event in events)

    started = b.post("/models/m1/start")
    assert started.status_code == 202 and started.json()["node"] == "b"
    assert cluster.wait_running_on("m1", via="b") == "b"
    assert overlaps_across_nodes(cluster.alive_log) == []


def test_nodes_loading_the_same_manifests_share_one_model(cluster: Cluster) -> None:
    """One ConfigMap on every node: the first node creates the model, the others find it
    stored as their manifest says and leave it to its node, with no issue reported."""
    repo_config = Path(__file__).resolve().parents[2] / "config"
    for name in ("a", "b"):
        config = cluster.root / name / "config"
        config.mkdir(parents=True)
        for file in ("vllm_mistral_7b.yaml", "AGENT_MODEL_MAP.json"):
            (config / file).write_text((repo_config / file).read_text())
        cluster.start(name)
    reports = {name: cluster.nodes[name].client.get("/manifests").json() for name in ("a", "b")}
    assert [m["action"] for m in reports["a"]["manifests"]] == ["created"]
    assert [m["action"] for m in reports["b"]["manifests"]] == ["unchanged"]
    # (No ModelStore here: both report the same unresolved adapters, and nothing else.)
    issues = [
        [issue["reason"] for issue in m["issues"]]
        for report in reports.values()
        for m in report["manifests"]
    ]
    assert issues[0] == issues[1] and all("not resolved" in r for r in issues[0]), issues
    assert [m["id"] for m in cluster.nodes["b"].client.get("/models").json()] == ["mistral-7b"]
    # b reloads: still nothing to do, and nothing taken from a.
    assert cluster.nodes["b"].client.post("/manifests/reload").status_code == 200
    nodes = {n["name"]: n for n in cluster.nodes["b"].client.get("/nodes").json()}
    assert [m["id"] for m in nodes["a"]["models"]] == ["mistral-7b"] and not nodes["b"]["models"]


def test_a_nodes_event_stream_carries_the_other_nodes_events(cluster: Cluster) -> None:
    """The console on b follows a model that runs on a: a's transitions reach b's /events,
    once each, in id order."""
    for name in ("a", "b"):
        cluster.start(name)
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    with (
        httpx.Client(base_url=b.url, timeout=20) as http,
        http.stream("GET", "/events", headers=sse_headers()) as response,
    ):
        messages = parse_sse(response.iter_lines())
        assert a.client.post("/models", json={"id": "m1", **SPEC}).status_code == 201
        assert a.client.post("/models/m1/start").json()["node"] == "a"
        events = events_of(messages, has("transition", "m1", "running"))
    transitions = [(e["from_state"], e["to_state"]) for e in events if e["kind"] == "transition"]
    assert transitions == [("stopped", "starting"), ("starting", "running")]
    ids = [event["id"] for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
