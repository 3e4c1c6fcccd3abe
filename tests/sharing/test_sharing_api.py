"""More models than fit: idle unload, eviction by priority and LRU, never a busy engine, and
vLLM's sleep mode, through the gateway, with the fake engine on simulated GPUs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import MakeSettings, running_app
from tests.gateway.conftest import spec
from tests.lifecycle.helpers import wait_state

GPU_MIB = 81920
# 0.6 x 80 GiB + the 1 GiB margin: two such engines never fit on one GPU together.
BIG = 0.6
# 0.3 x 80 GiB: two fit on one GPU.
SMALL = 0.3


async def _ask(client: httpx.AsyncClient, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": "x", "max_tokens": 1, **extra}
    return await client.post("/v1/completions", json=body)


async def _state(client: httpx.AsyncClient, model: str) -> str:
    state: str = (await client.get(f"/models/{model}")).json()["status"]["state"]
    return state


async def _assert_not_overcommitted(client: httpx.AsyncClient) -> None:
    for gpu in (await client.get("/gpus")).json()["gpus"]:
        assert gpu["total_mib"] - gpu["free_mib"] + gpu["reserved_mib"] <= gpu["total_mib"]


async def test_sharing_idle_engine_is_unloaded_then_started_again_on_demand(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[GPU_MIB])) as (_app, client):
        await client.post("/models", json=spec("tiny", idle_timeout_s=0.3))
        assert (await _ask(client, "tiny")).status_code == 200
        stopped = await wait_state(client, "tiny", "stopped", timeout_s=10)
        assert stopped["desired_state"] == "stopped"
        assert stopped["desired_reason"] == "idle"
        events = (await client.get("/models/tiny/events")).json()
        assert any("idle for" in e["reason"] for e in events if e.get("to_state") == "stopping")
        metrics = (await client.get("/metrics")).text
        assert 'gpu_orchestrator_evictions_total{model="tiny",reason="idle"} 1.0' in metrics
        assert (await _ask(client, "tiny")).status_code == 200  # starts it again
        again = (await client.get("/models/tiny")).json()["status"]
        assert again["state"] == "running" and again["desired_reason"] is None
        await client.post("/models/tiny/stop?wait=true")


async def test_sharing_an_engine_serving_a_request_is_never_unloaded(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[GPU_MIB])) as (_app, client):
        body = spec("tiny", "--token-interval-s", "0.1", idle_timeout_s=0.3)
        await client.post("/models", json=body)
        await client.post("/models/tiny/start")
        await wait_state(client, "tiny", "running")
        streaming = asyncio.create_task(_ask(client, "tiny", max_tokens=12, stream=True))
        states = set()
        while not streaming.done():  # 1.2 s of tokens, four idle timeouts long
            states.add(await _state(client, "tiny"))
            await asyncio.sleep(0.05)
        assert (await streaming).status_code == 200
        assert states == {"running"}
        await wait_state(client, "tiny", "stopped", timeout_s=10)  # idle once it is done


async def test_sharing_a_start_evicts_the_lowest_priority_least_recently_used_idle_engine(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(simulated_gpus=[GPU_MIB, GPU_MIB, GPU_MIB])
    async with running_app(settings) as (_app, client):
        for model, priority in (("old", 0), ("recent", 0), ("keeper", 5), ("new", 1)):
            body = spec(model, gpu_memory_util=BIG, priority=priority)
            await client.post("/models", json=body)
        for model in ("keeper", "old", "recent"):  # "recent" is used last
            assert (await _ask(client, model)).status_code == 200
        await _assert_not_overcommitted(client)
        # Without evict=true an operator's start is refused, and says what evict would do.
        refused = await client.post("/models/new/start")
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert detail["would_evict"] == ["old"]
        assert detail["not_evictable"] == {"keeper": "higher priority"}
        served = await _ask(client, "new")  # the gateway evicts
        assert served.status_code == 200
        assert await _state(client, "old") == "stopped"
        assert await _state(client, "recent") == "running"
        assert await _state(client, "keeper") == "running"
        old = (await client.get("/models/old")).json()["status"]
        assert old["desired_reason"] == "evicted for new"
        events = (await client.get("/models/new/events")).json()
        assert any(e["kind"] == "evicted_for_start" for e in events)
        metrics = (await client.get("/metrics")).text
        assert 'gpu_orchestrator_evictions_total{model="old",reason="make_room"} 1.0' in metrics
        await _assert_not_overcommitted(client)
        for model in ("recent", "keeper", "new"):
            await client.post(f"/models/{model}/stop?wait=true")


async def test_sharing_busy_and_higher_priority_engines_are_not_evicted(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[GPU_MIB])) as (_app, client):
        busy = spec("busy", "--token-interval-s", "0.1", gpu_memory_util=BIG)
        await client.post("/models", json=busy)
        await client.post("/models", json=spec("late", gpu_memory_util=BIG, start_timeout_s=5))
        await client.post("/models", json=spec("vip", gpu_memory_util=BIG, priority=9))
        assert (await _ask(client, "busy")).status_code == 200
        streaming = asyncio.create_task(_ask(client, "busy", max_tokens=8, stream=True))

        async def busy_in_flight() -> bool:
            status = (await client.get("/models/busy")).json()["status"]
            return bool(status["in_flight"] == 1)

        for _ in range(250):
            if await busy_in_flight():
                break
            await asyncio.sleep(0.02)
        assert await busy_in_flight()  # the stream is being served when "late" asks
        # While "busy" serves, the start waits; once it is idle it is evicted and "late" runs.
        answer = await _ask(client, "late")
        stream = await streaming
        assert stream.status_code == 200 and stream.text.count("data: {") == 8  # never cut
        assert answer.status_code == 200
        assert await _state(client, "busy") == "stopped"
        await _assert_not_overcommitted(client)
        # A higher priority engine is never evicted for a lower one.
        await client.post("/models/late/stop?wait=true")
        assert (await _ask(client, "vip")).status_code == 200
        refused = await client.post("/models/late/start?evict=true")
        assert refused.status_code == 409
        assert refused.json()["detail"]["not_evictable"] == {"vip": "higher priority"}
        through_gateway = await _ask(client, "late")
        assert through_gateway.status_code == 503
        assert through_gateway.json()["error"]["not_evictable"] == {"vip": "higher priority"}
        await client.post("/models/vip/stop?wait=true")


async def test_sharing_sleep_mode_frees_the_gpu_and_one_wake_serves_everyone(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[GPU_MIB])) as (_app, client):
        body = spec("dozy", gpu_memory_util=BIG, idle_timeout_s=0.3, sleep_level=1)
        await client.post("/models", json=body)
        assert (await _ask(client, "dozy")).status_code == 200
        awake = (await client.get("/models/dozy")).json()["status"]
        asleep = await wait_state(client, "dozy", "sleeping", timeout_s=10)
        assert asleep["pid"] == awake["pid"] and asleep["desired_state"] == "running"
        gpus = (await client.get("/gpus")).json()["gpus"]
        assert gpus[0]["models"] == [] and gpus[0]["free_mib"] == GPU_MIB
        metrics = (await client.get("/metrics")).text
        assert 'gpu_orchestrator_vllm_status{model="dozy"} 6.0' in metrics
        answers = await asyncio.gather(*(_ask(client, "dozy") for _ in range(10)))
        assert {answer.status_code for answer in answers} == {200}
        woken = (await client.get("/models/dozy")).json()["status"]
        assert woken["state"] == "running" and woken["pid"] == awake["pid"]
        engine = httpx.get(f"{woken['base_url']}/fake/state", timeout=5).json()
        assert engine["requests"]["/wake_up"] == 1 and engine["sleeping"] == 0
        await client.post("/models/dozy/stop?wait=true")


async def _watch_overcommit(client: httpx.AsyncClient, done: asyncio.Event) -> int:
    """Sample /gpus until `done`; the headroom invariant must hold at every sample."""
    samples = 0
    while not done.is_set():
        await _assert_not_overcommitted(client)
        samples += 1
        await asyncio.sleep(0.01)
    return samples


async def test_sharing_two_cold_starts_competing_for_one_gpu_both_get_served(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(simulated_gpus=[GPU_MIB])) as (_app, client):
        for model in ("left", "right"):
            body = spec(model, "--ready-delay-s", "0.2", gpu_memory_util=BIG)
            await client.post("/models", json=body)
        done = asyncio.Event()
        watcher = asyncio.create_task(_watch_overcommit(client, done))
        answers = await asyncio.gather(_ask(client, "left"), _ask(client, "right"))
        done.set()
        assert await watcher > 5
        assert [answer.status_code for answer in answers] == [200, 200]
        states = {await _state(client, "left"), await _state(client, "right")}
        assert states == {"running", "stopped"}  # one at a time, never both
        for model in ("left", "right"):
            await client.post(f"/models/{model}/stop?wait=true")


async def test_sharing_a_request_for_a_model_being_evicted_is_served_after(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(simulated_gpus=[GPU_MIB], stop_grace_s=0.5)
    async with running_app(settings) as (_app, client):
        # "victim" ignores SIGTERM: its eviction takes the whole grace period.
        victim = spec("victim", "--ignore-sigterm", gpu_memory_util=BIG)
        await client.post("/models", json=victim)
        await client.post("/models", json=spec("taker", gpu_memory_util=BIG))
        assert (await _ask(client, "victim")).status_code == 200
        taking = asyncio.create_task(_ask(client, "taker"))
        for _ in range(250):
            if await _state(client, "victim") == "stopping":
                break
            await asyncio.sleep(0.01)
        assert await _state(client, "victim") == "stopping"
        back = await _ask(client, "victim")  # asked while it is being evicted
        assert (await taking).status_code == 200
        assert back.status_code == 200
        # Served both ways, one engine at a time: whichever came last holds the GPU.
        states = {await _state(client, "victim"), await _state(client, "taker")}
        assert states == {"running", "stopped"}
        await _assert_not_overcommitted(client)
        for model in ("victim", "taker"):
            await client.post(f"/models/{model}/stop?wait=true")
