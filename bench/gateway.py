"""Gateway: what `/v1/*` through the service costs, beside the client straight to the engine and
beside LiteLLM's proxy and vllm-router in front of the very same engines, in one run.

The orchestrator runs as `gpu-orchestrator serve` and starts two fake engines on demand through
its gateway: `instant` (answers at once: the proxy-bound workload) and `paced` (one streamed token
per 20 ms: the engine-bound one). LiteLLM (one proxy, both engines as hosted_vllm backends) and
vllm-router (one per engine) point at the same engine URLs. Each workload is measured side after
side by bench/http_load.py in its own process, in an order that rotates every round, so a drift
of the machine weighs on every side alike. A third model, `cold`, measures the cold start through
the gateway against the same engine command spawned bare, alternating.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import gateway_report
from bench.gateway_cold import measure_cold_starts, post_completion
from bench.gateway_sides import (
    LITELLM,
    VLLM_ROUTER,
    Proxy,
    bench_env,
    start_litellm,
    start_vllm_router,
    stop,
    wait_serving,
)
from bench.harness import REPO_ROOT, fake_spec, orchestrator
from bench.report import SectionResult

NAME = "gateway"
TITLE = "OpenAI gateway vs direct, LiteLLM and vllm-router (fake engine)"
DIRECT, OURS = "direct", "ours"
SIDES = (DIRECT, OURS, LITELLM, VLLM_ROUTER)
INSTANT, PACED, COLD = "instant", "paced", "cold"
TOKEN_INTERVAL_S = 0.02
FAST_ENGINE = "--tcp-nodelay"  # as vLLM's uvicorn: no Nagle stalls in the baseline itself
PROXY_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Workload:
    name: str
    engine: str
    concurrency: int
    max_tokens: int
    stream: bool
    duration_s: float
    max_requests: int = 1_000_000
    ramp: bool = False  # clients' starts spread over one stream's length

    def tokens(self, quick: bool) -> int:
        # Quick mode: 10-token streams, so the in-flight ones drain fast after the window.
        return min(self.max_tokens, 10) if quick else self.max_tokens

    def body(self, quick: bool) -> dict[str, Any]:
        body = {"model": self.engine, "prompt": "hello", "max_tokens": self.tokens(quick)}
        return {**body, "stream": True} if self.stream else body

    def ramp_s(self, quick: bool) -> float:
        return self.tokens(quick) * TOKEN_INTERVAL_S if self.ramp else 0.0


WORKLOADS = (
    Workload("latency_c1", INSTANT, 1, 16, False, 3.0, max_requests=3000),
    Workload("ttfc_c1", PACED, 1, 2, True, 3.0),
    Workload("rps_c32", INSTANT, 32, 16, False, 4.0),
    Workload("stream_c64", PACED, 64, 50, True, 5.0, ramp=True),
)


def load(
    url: str, workload: Workload, *, quick: bool, headers: Sequence[str], out: Path
) -> dict[str, Any]:
    """One run of bench/http_load.py against `url`; its result with every sample, from `out`."""
    # Quick runs are short, but a stream window must outlast a slow proxy's first chunk (LiteLLM's
    # arrive 1.4-1.7 s late at 64 streams), or it would count no token at all.
    duration_s = (2.0 if workload.ramp else 0.5) if quick else workload.duration_s
    argv = [sys.executable, "-m", "bench.http_load", url, "--out", str(out)]
    argv += ["--body", json.dumps(workload.body(quick))]
    argv += ["--concurrency", str(workload.concurrency), "--duration-s", str(duration_s)]
    argv += ["--max-requests", str(workload.max_requests)]
    argv += ["--ramp-s", str(workload.ramp_s(quick))]
    for header in headers:
        argv += ["--header", header]
    completed = subprocess.run(
        argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=duration_s + 180, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load client exited {completed.returncode}: {completed.stderr[-800:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} failed requests: {result['statuses']}")
    return result


def round_order(sides: Sequence[str], round_index: int) -> list[str]:
    """Rotated by one each round, reversed every other round: each side runs early and late."""
    shift = round_index % len(sides)
    order = [*sides[shift:], *sides[:shift]]
    return order[::-1] if round_index % 2 else order


def measure_workloads(
    targets: dict[str, dict[str, str]],
    *,
    rounds: int,
    quick: bool,
    headers: Sequence[str],
    work_dir: Path,
) -> dict[str, dict[str, list[dict[str, Any]] | str]]:
    """workload -> side -> its runs, or the error that stopped that side."""
    results: dict[str, dict[str, list[dict[str, Any]] | str]] = {}
    for workload in WORKLOADS:
        per_side: dict[str, list[dict[str, Any]] | str] = {side: [] for side in targets}
        for round_index in range(rounds):
            for side in round_order(list(targets), round_index):
                runs = per_side[side]
                if isinstance(runs, str):
                    continue  # this side already failed this workload
                url = targets[side][workload.engine]
                print(f"   {workload.name} round {round_index + 1}: {side}", file=sys.stderr)
                try:
                    out = work_dir / "load.json"
                    runs.append(load(url, workload, quick=quick, headers=headers, out=out))
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    per_side[side] = f"{type(error).__name__}: {error}"
        results[workload.name] = per_side
    return results


def _answers(headers: Sequence[str]) -> Callable[[str, str], bool]:
    def probe(model: str, url: str) -> bool:
        return post_completion(url, model, headers) == 200

    return probe


def _start_proxies(
    engines: dict[str, str], *, quick: bool, work_dir: Path, run_id: str, key: str
) -> tuple[list[Proxy], dict[str, str]]:
    """The proxies whose venv is there (built first in a full run); why each other one is not."""
    proxies: list[Proxy] = []
    unavailable: dict[str, str] = {}
    for tool in (LITELLM, VLLM_ROUTER):
        try:
            env_dir = bench_env(tool, build=not quick)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            unavailable[tool] = f"not available: {error}"
            continue
        try:
            if tool == LITELLM:
                proxies.append(
                    start_litellm(
                        env_dir, engines, work_dir=work_dir, run_id=run_id, master_key=key
                    )
                )
            else:
                for engine, base_url in engines.items():
                    proxies.append(
                        start_vllm_router(
                            env_dir, engine, base_url, work_dir=work_dir, run_id=run_id
                        )
                    )
        except OSError as error:
            unavailable[tool] = f"cannot start: {error}"
    return proxies, unavailable


def run(*, work_dir: Path, run_id: str, quick: bool, seed: int) -> SectionResult:
    rounds = 1 if quick else 3
    work_dir.mkdir(parents=True, exist_ok=True)
    key = f"sk-bench-{uuid.uuid4().hex}"
    headers = [f"Authorization: Bearer {key}"]
    figures: dict[str, Any] = {"rounds": rounds, "token_interval_s": TOKEN_INTERVAL_S}
    # A port range of its own: the test suites' orchestrators use 28100-28199.
    with orchestrator(
        work_dir / "state",
        run_id,
        GPU_ORCH_INFERENCE_TOKENS=key,
        GPU_ORCH_PORT_RANGE_START="28600",
        GPU_ORCH_PORT_RANGE_END="28699",
    ) as orch:
        fake_args = {INSTANT: FAST_ENGINE, PACED: f"{FAST_ENGINE} --token-interval-s 0.02"}
        for model_id, args in fake_args.items():
            orch.create(fake_spec(model_id, env={"FAKE_ENGINE_ARGS": args}))
        orch.create(fake_spec(COLD))
        gateway_url = f"{orch.url}/v1/completions"
        for model_id in fake_args:  # started on demand by their first request
            status = post_completion(gateway_url, model_id, headers, timeout_s=60)
            if status != 200:
                raise RuntimeError(f"the gateway answered {status} for {model_id}")
        engines = {m: str(orch.status(m)["base_url"]).rstrip("/") for m in fake_args}
        figures["cold_start"] = measure_cold_starts(
            orch, gateway_url, model_id=COLD, work_dir=work_dir, run_id=run_id,
            trials=1 if quick else 10, ready_delay_s=0.2 if quick else 1.0, headers=headers,
            engine_flag=FAST_ENGINE,
        )  # fmt: skip
        proxies, unavailable = _start_proxies(
            engines, quick=quick, work_dir=work_dir, run_id=run_id, key=key
        )
        try:
            targets = {
                DIRECT: {m: f"{url}/v1/completions" for m, url in engines.items()},
                OURS: {m: gateway_url for m in engines},
            }
            for proxy in proxies:
                try:
                    waited_s = wait_serving(proxy, _answers(headers), PROXY_START_TIMEOUT_S)
                    figures.setdefault("proxy_start_s", {})[proxy.name] = round(waited_s, 1)
                    targets.setdefault(proxy.name, {}).update(proxy.completions_urls)
                except (RuntimeError, TimeoutError) as error:
                    unavailable[proxy.name] = f"did not serve: {error}"
            for name in unavailable:
                targets.pop(name, None)
            figures["unavailable"] = unavailable
            results = measure_workloads(
                targets, rounds=rounds, quick=quick, headers=headers, work_dir=work_dir
            )
        finally:
            for proxy in proxies:
                stop(proxy)
    figures.update(gateway_report.aggregate(results))
    print(gateway_report.side_by_side_markdown(figures), file=sys.stderr)
    return SectionResult(
        name=NAME,
        title=TITLE,
        method=gateway_report.method(rounds=rounds, quick=quick),
        figures=figures,
        rows=gateway_report.rows(figures),
    )
