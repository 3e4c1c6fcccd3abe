"""API cost: GET /models/{id} and GET /models (100 specs) at 32 concurrent clients, against a
bare FastAPI route returning the same JSON under the same uvicorn settings, in the same run.

Both servers run at once as their own processes (one uvicorn worker each, 127.0.0.1); the load
client (bench.load_client, httpx) is a third process, bounded by a request count and a duration.
Each endpoint is measured in alternating order (orchestrator, bare, bare, orchestrator, ...) so a
drift of the machine during the run weighs on both sides alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.harness import REPO_ROOT, fake_spec, kill_group, orchestrator, wait_for
from bench.report import Row, SectionResult
from tests.fakes import free_port

NAME = "api_cost"
TITLE = "API cost at 32 concurrent clients (orchestrator vs bare FastAPI route, same JSON)"
GOAL_RATIO = 0.5
SPECS = 100
CONCURRENCY = 32
SAMPLE_ID = "m050"


def load(url: str, *, max_requests: int, max_duration_s: float) -> dict[str, Any]:
    """One run of the load client process against `url`."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load_client",
            url,
            "--concurrency",
            str(CONCURRENCY),
            "--max-requests",
            str(max_requests),
            "--max-duration-s",
            str(max_duration_s),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=max_duration_s + 120,
    )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors']} of {result['requests']} requests failed")
    return result


def _start_bare(work_dir: Path, model: Any, models: Any) -> tuple[subprocess.Popen[bytes], str]:
    model_file, list_file = work_dir / "model.json", work_dir / "models.json"
    model_file.write_text(json.dumps(model))
    list_file.write_text(json.dumps(models))
    port = free_port()
    with (work_dir / "bare.log").open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare_app",
                "--port",
                str(port),
                "--model-json",
                str(model_file),
                "--list-json",
                str(list_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"bare app exited {process.returncode}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 30, interval_s=0.05, what="bare app /readyz")
    return process, url


def _alternating(rounds: int) -> list[str]:
    """o b, b o, o b, ...: each side goes first as often as the other."""
    sides: list[str] = []
    for index in range(rounds):
        pair = ["orchestrator", "bare"]
        sides += pair if index % 2 == 0 else pair[::-1]
    return sides


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(run["requests"] for run in runs)
    duration_s = sum(run["duration_s"] for run in runs)
    return {
        "requests": requests,
        "rps": round(requests / duration_s, 1),
        "p99_ms": max(run["p99_ms"] for run in runs),
        "runs": runs,
    }


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    rounds, duration_s = (1, 2.0) if quick else (2, 8.0)
    max_requests = 100_000
    work_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"specs": SPECS, "concurrency": CONCURRENCY, "duration_s": duration_s}
    rows: list[Row] = []
    with orchestrator(work_dir / "state", run_id) as orch:
        for index in range(SPECS):
            orch.create(fake_spec(f"m{index:03d}"))
        model = orch.request("GET", f"/models/{SAMPLE_ID}")
        models = orch.request("GET", "/models")
        bare, bare_url = _start_bare(work_dir, model, models)
        try:
            for endpoint in (f"/models/{SAMPLE_ID}", "/models"):
                samples: dict[str, list[dict[str, Any]]] = {"orchestrator": [], "bare": []}
                for side in _alternating(rounds):
                    base = orch.url if side == "orchestrator" else bare_url
                    samples[side].append(
                        load(base + endpoint, max_requests=max_requests, max_duration_s=duration_s)
                    )
                ours, theirs = _combine(samples["orchestrator"]), _combine(samples["bare"])
                ratio = ours["rps"] / theirs["rps"]
                label = "GET /models/{id}" if endpoint != "/models" else f"GET /models ({SPECS})"
                figures[label] = {"orchestrator": ours, "bare": theirs, "ratio": round(ratio, 3)}
                rows += [
                    Row(f"{label} req/s", f"{ours['rps']:.0f}", f"{theirs['rps']:.0f}"),
                    Row(f"{label} p99 (ms)", f"{ours['p99_ms']:.1f}", f"{theirs['p99_ms']:.1f}"),
                    Row(
                        f"{label} throughput ratio",
                        f"{ratio:.2f}",
                        "",
                        f">= {GOAL_RATIO:g}",
                        ratio >= GOAL_RATIO,
                    ),
                ]
        finally:
            kill_group(bare, grace_s=5)
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=(
            f"{CONCURRENCY} keep-alive clients (httpx, own process), {rounds * 2} runs of "
            f"{duration_s:g} s per endpoint, alternating; ratio = orchestrator req/s / bare req/s"
        ),
        figures=figures,
        rows=rows,
    )
