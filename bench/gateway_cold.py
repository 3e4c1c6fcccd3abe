"""Cold start: a request for a stopped model through the gateway, against the engine's own start.

Through the gateway: from just before the request is written to its answer, read in full; the
gateway starts the engine on demand, waits until it is ready and forwards the request. The
engine's own start: the same command (same interpreter, same fake flags) spawned bare, and
`POST /v1/completions` tried every millisecond from just before the spawn until the first 200,
the soonest any client could have been served. Both engines write `--record` (`listening_at`),
which splits each figure into the time until the engine listened and the time after it.
Trials alternate which side goes first.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.harness import RUN_ID_ENV, Orchestrator, kill_group
from bench.report import median, summary_ms
from tests.fakes import fake_engine_command, free_port, vllm_args

POLL_INTERVAL_S = 0.001
START_TIMEOUT_S = 60.0


def post_completion(
    url: str, model: str, headers: Sequence[str], *, timeout_s: float = 2.0
) -> int | None:
    """The status of a one-token completion POSTed to `url`; None when nothing answered."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    request_headers = {"Content-Type": "application/json"}
    for header in headers:
        name, _, value = header.partition(": ")
        request_headers[name] = value
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 1})
    try:
        connection.request("POST", parts.path, body=body, headers=request_headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _listening_at(record: Path) -> float:
    return float(json.loads(record.read_text())["listening_at"])


def _gateway_trial(
    orch: Orchestrator, url: str, model_id: str, fake_args: str, record: Path, headers: list[str]
) -> dict[str, float]:
    orch.request("PATCH", f"/models/{model_id}", json={"env": {"FAKE_ENGINE_ARGS": fake_args}})
    sent = time.time()
    status = post_completion(url, model_id, headers, timeout_s=START_TIMEOUT_S)
    answered = time.time()
    if status != 200:
        raise RuntimeError(f"cold start through the gateway answered {status}")
    listening = _listening_at(record)
    orch.request("POST", f"/models/{model_id}/stop?wait=true")
    return {
        "total": answered - sent,
        "to_listening": listening - sent,
        "after": answered - listening,
    }


def _bare_trial(
    model_id: str, fake_args: list[str], record: Path, headers: list[str], run_id: str
) -> dict[str, float]:
    port = free_port()
    argv = [*fake_engine_command(*fake_args), *vllm_args(port=port, served_model_name=model_id)]
    url = f"http://127.0.0.1:{port}/v1/completions"
    env = {RUN_ID_ENV: run_id, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with record.with_suffix(".log").open("ab") as log:
        spawned = time.time()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        while post_completion(url, model_id, headers, timeout_s=5) != 200:
            if process.poll() is not None:
                raise RuntimeError(f"bare engine exited {process.returncode}")
            if time.time() - spawned > START_TIMEOUT_S:
                raise TimeoutError("bare engine did not answer")
            time.sleep(POLL_INTERVAL_S)
        answered = time.time()
    finally:
        kill_group(process, grace_s=5)
    listening = _listening_at(record)
    return {
        "total": answered - spawned,
        "to_listening": listening - spawned,
        "after": answered - listening,
    }


def measure_cold_starts(
    orch: Orchestrator,
    gateway_url: str,
    *,
    model_id: str,
    work_dir: Path,
    run_id: str,
    trials: int,
    ready_delay_s: float,
    headers: list[str],
    engine_flag: str,
) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {"gateway": [], "engine": []}
    for trial in range(trials):
        order = ["gateway", "engine"] if trial % 2 == 0 else ["engine", "gateway"]
        for side in order:
            record = work_dir / f"cold-{side}-{trial}.json"
            flags = [engine_flag, "--ready-delay-s", f"{ready_delay_s:g}", "--record", str(record)]
            if side == "gateway":
                sample = _gateway_trial(
                    orch, gateway_url, model_id, " ".join(flags), record, headers
                )
            else:
                sample = _bare_trial(model_id, flags, record, headers, run_id)
            samples[side].append(sample)
    figures: dict[str, Any] = {"trials": trials, "ready_delay_s": ready_delay_s}
    for side, side_samples in samples.items():
        figures[side] = {
            part: summary_ms([sample[part] for sample in side_samples])
            for part in ("total", "to_listening", "after")
        }
    totals = {side: median([s["total"] for s in samples[side]]) for side in samples}
    figures["added_median_ms"] = round((totals["gateway"] - totals["engine"]) * 1000, 1)
    return figures
