"""The trials of the swap benchmark: one swap through the gateway, and the same swap done bare.

Through the gateway: from just before `POST /v1/completions` for the model that is not loaded
to its answer, read in full; the orchestrator unloads the other model (stops it, or puts it to
sleep), starts or wakes the requested one and forwards the request. The events of both models
(`at`, milliseconds) and the fake engine's `--record` (`listening_at`) split it into steps.

Bare, what the engine itself spends on the same swap, with nothing in between:
stop-and-start: SIGTERM to the loaded engine's group, wait for it to exit, spawn the other with
the same fake flags and try the completion every millisecond until the first 200;
sleep-and-wake: `POST /sleep?level=1` to one engine, `POST /wake_up` to the other (kept-alive
connections, as the orchestrator's sleep client has), then the completion.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gateway_cold import post_completion
from bench.harness import RUN_ID_ENV, Orchestrator, epoch_s, kill_group
from tests.fakes import fake_engine_command, free_port, vllm_args

POLL_INTERVAL_S = 0.001
SWAP_TIMEOUT_S = 60.0
SLEEP_ENV = {"VLLM_SERVER_DEV_MODE": "1"}


def _transition_at(events: list[dict[str, Any]], to_state: str, after_id: int) -> float:
    """When the first transition to `to_state` newer than `after_id` was recorded (epoch s)."""
    for event in sorted(events, key=lambda e: int(e["id"])):
        newer = event["id"] > after_id and event["kind"] == "transition"
        if newer and event["to_state"] == to_state:
            return epoch_s(event["at"])
    raise LookupError(f"no transition to {to_state} after event {after_id}")


def _listening_at(record: Path) -> float:
    return float(json.loads(record.read_text())["listening_at"])


def _answer(url: str, model_id: str, timeout_s: float = SWAP_TIMEOUT_S) -> float:
    """time.time() once the completion through `url` answered 200 (read in full)."""
    status = post_completion(url, model_id, [], timeout_s=timeout_s)
    answered = time.time()
    if status != 200:
        raise RuntimeError(f"completion for {model_id} through {url} answered {status}")
    return answered


def gateway_stop_start(
    orch: Orchestrator,
    target: str,
    victim: str,
    record: Path | None,
    timeout_s: float = SWAP_TIMEOUT_S,
) -> dict[str, float]:
    """One stop-and-start swap to `target` through the gateway, and its steps (seconds); with
    the engine's `--record` file, the start is split where the engine began listening."""
    marker = max(orch.last_event_id(victim), orch.last_event_id(target))
    sent = time.time()
    answered = _answer(f"{orch.url}/v1/completions", target, timeout_s)
    if orch.status(victim)["state"] != "stopped":
        raise RuntimeError(f"{victim} was not stopped to make room for {target}")
    victim_events, target_events = orch.events(victim), orch.events(target)
    stopped = _transition_at(victim_events, "stopped", marker)
    starting = _transition_at(target_events, "starting", marker)
    running = _transition_at(target_events, "running", marker)
    steps = {
        "total": answered - sent,
        "to_victim_stopped": stopped - sent,
        "stopped_to_starting": starting - stopped,
    }
    if record is None:
        steps["starting_to_running"] = running - starting
    else:
        listening = _listening_at(record)
        steps["starting_to_listening"] = listening - starting
        steps["listening_to_running"] = running - listening
    return {**steps, "running_to_answer": answered - running}


def gateway_sleep_wake(orch: Orchestrator, target: str, victim: str) -> dict[str, float]:
    """One sleep-and-wake swap to `target` through the gateway, and its steps (seconds)."""
    pid = orch.status(target)["pid"]
    marker = max(orch.last_event_id(victim), orch.last_event_id(target))
    sent = time.time()
    answered = _answer(f"{orch.url}/v1/completions", target)
    if orch.status(victim)["state"] != "sleeping":
        raise RuntimeError(f"{victim} was not put to sleep to make room for {target}")
    if orch.status(target)["pid"] != pid:
        raise RuntimeError(f"{target} was restarted, not woken")
    asleep = _transition_at(orch.events(victim), "sleeping", marker)
    awake = _transition_at(orch.events(target), "running", marker)
    return {
        "total": answered - sent,
        "to_victim_sleeping": asleep - sent,
        "sleeping_to_running": awake - asleep,
        "running_to_answer": answered - awake,
    }


@dataclass
class BareEngine:
    """A fake engine spawned bare (its own session, tagged with the run id)."""

    process: subprocess.Popen[bytes]
    port: int
    model_id: str
    spawned_at: float

    @property
    def completions_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/completions"


def spawn_bare(
    model_id: str, flags: list[str], log_path: Path, run_id: str, env: dict[str, str]
) -> BareEngine:
    port = free_port()
    argv = [*fake_engine_command(*flags), *vllm_args(port=port, served_model_name=model_id)]
    engine_env = {**env, RUN_ID_ENV: run_id, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with log_path.open("ab") as log:
        spawned_at = time.time()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=engine_env, start_new_session=True
        )
    return BareEngine(process, port, model_id, spawned_at)


def wait_answering(engine: BareEngine) -> float:
    """time.time() of the first 200 to a completion tried every millisecond."""
    while post_completion(engine.completions_url, engine.model_id, [], timeout_s=5) != 200:
        if engine.process.poll() is not None:
            raise RuntimeError(f"bare engine {engine.model_id} exited {engine.process.returncode}")
        if time.time() - engine.spawned_at > SWAP_TIMEOUT_S:
            raise TimeoutError(f"bare engine {engine.model_id} did not answer")
        time.sleep(POLL_INTERVAL_S)
    return time.time()


def bare_stop_start(
    loaded: BareEngine, target_id: str, flags: list[str], log_path: Path, run_id: str
) -> tuple[dict[str, float], BareEngine]:
    """Stop `loaded`, start `target_id`, first answer: the steps (seconds) and the new engine."""
    started = time.time()
    kill_group(loaded.process, grace_s=10)
    stopped = time.time()
    engine = spawn_bare(target_id, flags, log_path, run_id, {})
    answered = wait_answering(engine)
    listening = _listening_at(Path(flags[flags.index("--record") + 1]))
    sample = {
        "total": answered - started,
        "stop": stopped - started,
        "spawn_to_listening": listening - engine.spawned_at,
        "listening_to_answer": answered - listening,
    }
    return sample, engine


class KeptAlive:
    """One kept-alive HTTP connection to a bare engine's sleep routes."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=SWAP_TIMEOUT_S)

    def post(self, path: str) -> None:
        self.connection.request("POST", path, body=b"", headers={"Content-Length": "0"})
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status}")

    def close(self) -> None:
        self.connection.close()


def bare_sleep_wake(
    victim: KeptAlive, target: KeptAlive, target_url: str, target_id: str
) -> dict[str, float]:
    """Sleep one bare engine, wake the other, first answer: the steps (seconds)."""
    started = time.time()
    victim.post("/sleep?level=1")
    asleep = time.time()
    target.post("/wake_up")
    awake = time.time()
    answered = _answer(target_url, target_id)
    return {
        "total": answered - started,
        "sleep_call": asleep - started,
        "wake_call": awake - asleep,
        "answer": answered - awake,
    }
