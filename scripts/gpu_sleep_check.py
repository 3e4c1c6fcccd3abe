"""Real sleep-and-wake swaps on a GPU node; run by scripts/gpu-sleep-check.sh, which checks first
that nvidia-smi answers, one GPU is visible, CUDA vLLM imports and this repository's venv is there.

Starts `gpu-orchestrator serve` on NVML with the CUDA vLLM as its engine command, registers two
models with sleep_level set that do not fit on the GPU together, and starts both through the
gateway (the second start puts the first to sleep). Then it asks for them in turn through the
gateway: each request puts the other engine to sleep and wakes its own. Per swap it prints the
wall time the client saw, the GPU's free memory (NVML) before, at its highest during the swap
(after the sleep, before the wake took the memory back) and after, and the transitions of both
models. Exit 1 when a swap failed (not answered by its model, an engine restarted rather than
woken, a transition missing), when a sleeping engine kept more than a quarter of its memory, or
when a wake did not take back what its engine had (free memory after a swap differs from before
by more than the tolerance); 2 when it could not run.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pynvml

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIR = ("sleep-check-a", "sleep-check-b")
SAMPLE_INTERVAL_S = 0.002
MAX_ASLEEP_SHARE = 0.25  # of an awake engine's memory that a sleeping one may keep


class GpuMemory:
    """Free and total MiB of GPU 0 through NVML."""

    def __init__(self) -> None:
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def _info(self) -> Any:
        return pynvml.nvmlDeviceGetMemoryInfo(self._handle)

    def free_mib(self) -> int:
        return int(self._info().free) // (1024 * 1024)

    def total_mib(self) -> int:
        return int(self._info().total) // (1024 * 1024)


class PeakSampler:
    """The highest free MiB seen while a swap runs, sampled every 2 ms on a thread."""

    def __init__(self, gpu: GpuMemory) -> None:
        self.gpu = gpu
        self.peak_mib = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak_mib = max(self.peak_mib, self.gpu.free_mib())
            self._done.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class Api:
    """The orchestrator's API and its gateway, on one port."""

    url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=900, trust_env=False)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def status(self, model_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.call("GET", f"/models/{model_id}")["status"]
        return status

    def transitions_after(self, model_id: str, after_id: int) -> list[dict[str, Any]]:
        events = self.call("GET", f"/models/{model_id}/events", params={"limit": 50})
        found = [e for e in events if e["id"] > after_id and e["kind"] == "transition"]
        return sorted(found, key=lambda e: int(e["id"]))

    def last_event_id(self) -> int:
        ids = [e["id"] for m in PAIR for e in self.call("GET", f"/models/{m}/events?limit=1")]
        return max(ids, default=0)

    def ask(self, model_id: str) -> tuple[float, httpx.Response]:
        """Seconds one completion through the gateway took, and its response."""
        body = {"model": model_id, "prompt": "The GPU is shared by", "max_tokens": 4}
        started = time.monotonic()
        response = self.client.post("/v1/completions", json=body)
        return time.monotonic() - started, response


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(api: Api) -> bool:
    with suppress(httpx.HTTPError):
        return api.client.get("/readyz").status_code == 200
    return False


@contextmanager
def orchestrator(args: argparse.Namespace, state_dir: Path) -> Iterator[Api]:
    """`gpu-orchestrator serve` on NVML; on exit both models are stopped, then the service."""
    port = _free_port()
    command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    env = {
        **os.environ,
        "GPU_ORCH_STATE_DIR": str(state_dir),
        "GPU_ORCH_CONFIG_DIR": str(state_dir / "config"),
        "GPU_ORCH_GPU_BACKEND": "nvml",
        "GPU_ORCH_LAUNCHER": "subprocess",
        "GPU_ORCH_VLLM_COMMAND": shlex.join(command),
        "GPU_ORCH_START_TIMEOUT_S": str(args.start_timeout_s),
        "GPU_ORCH_STOP_ENGINES_ON_SHUTDOWN": "true",
    }
    (state_dir / "config").mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "orchestrator.log"
    serve = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*serve, "--log-level", "warning"],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = Api(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while not _answers(api):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the orchestrator did not start; see {log_path}")
            time.sleep(0.1)
        yield api
    finally:
        for model_id in PAIR:
            with suppress(Exception):
                api.call("POST", f"/models/{model_id}/stop?wait=true")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        api.client.close()


@dataclass
class Swap:
    target: str
    victim: str
    wall_s: float
    free_before_mib: int
    peak_free_mib: int
    free_after_mib: int
    transitions: list[str]
    problems: list[str]


def _transition_lines(api: Api, after_id: int, sent_wall: float) -> list[str]:
    """Both models' transitions since `after_id`, in the order they happened."""
    found = [(m, e) for m in PAIR for e in api.transitions_after(m, after_id)]
    lines = []
    for model_id, event in sorted(found, key=lambda pair: int(pair[1]["id"])):
        at_ms = (datetime.fromisoformat(event["at"]).timestamp() - sent_wall) * 1000
        move = f"{event['from_state']} -> {event['to_state']}"
        lines.append(f"{model_id}: {move} at +{at_ms:.0f} ms")
    return lines


def _swap_problems(api: Api, swap: Swap, response: httpx.Response, pid: int, marker: int) -> None:
    target, victim = swap.target, swap.victim
    if response.status_code != 200 or response.json().get("model") != target:
        swap.problems.append(f"answered {response.status_code}: {response.text[:300]}")
    target_status, victim_status = api.status(target), api.status(victim)
    if victim_status["state"] != "sleeping":
        swap.problems.append(f"{victim} is {victim_status['state']}, not sleeping")
    if target_status["state"] != "running" or target_status["pid"] != pid:
        swap.problems.append(f"{target} restarted (pid {pid} -> {target_status['pid']}), not woken")
    for model_id, move in ((victim, ("running", "sleeping")), (target, ("sleeping", "running"))):
        moves = [(e["from_state"], e["to_state"]) for e in api.transitions_after(model_id, marker)]
        if move not in moves:
            swap.problems.append(f"no {move[0]} -> {move[1]} transition of {model_id}")


def swap(api: Api, gpu: GpuMemory, target: str, victim: str, pid: int) -> Swap:
    """Ask for `target` (asleep, pid `pid`) while `victim` serves."""
    marker, free_before = api.last_event_id(), gpu.free_mib()
    sent_wall = time.time()
    with PeakSampler(gpu) as sampler:
        wall_s, response = api.ask(target)
    free_after = gpu.free_mib()
    found = Swap(target, victim, wall_s, free_before, sampler.peak_mib, free_after, [], [])
    _swap_problems(api, found, response, pid, marker)
    found.transitions = _transition_lines(api, marker, sent_wall)
    return found


def _check_memory(
    found: Swap, *, one_awake_free_mib: int, awake_mib: int, tolerance_mib: int
) -> None:
    """A wake takes back what the sleep gave; a sleeping engine keeps little (an estimate: free
    with one engine awake and none asleep, less free now with one awake and one asleep)."""
    drift_mib = found.free_after_mib - found.free_before_mib
    if abs(drift_mib) > tolerance_mib:
        found.problems.append(
            f"the wake did not take back the memory: free {found.free_before_mib} -> "
            f"{found.free_after_mib} MiB ({drift_mib:+d}, tolerance {tolerance_mib})"
        )
    asleep_mib = one_awake_free_mib - found.free_after_mib
    if asleep_mib > MAX_ASLEEP_SHARE * awake_mib:
        found.problems.append(
            f"{found.victim} asleep still holds ~{asleep_mib} MiB of its {awake_mib} awake"
        )


def _print_swap(number: int, found: Swap) -> None:
    verdict = "ok" if not found.problems else "FAILED"
    print(f"swap {number}: {found.victim} -> {found.target}: {found.wall_s:.3f} s, {verdict}")
    print(
        f"  free MiB: before {found.free_before_mib}, highest during the swap (after the sleep) "
        f"{found.peak_free_mib}, after the wake {found.free_after_mib}"
    )
    for line in found.transitions:
        print(f"  {line}")
    for problem in found.problems:
        print(f"  problem: {problem}")


def _spec(args: argparse.Namespace, model_id: str, model: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": model_id,
        "model": model,
        "dtype": args.dtype,
        "gpu_memory_util": args.gpu_memory_util,
        "sleep_level": args.sleep_level,
        "extra_args": shlex.split(args.extra_args),
    }
    if args.max_model_len:
        spec["max_model_len"] = args.max_model_len
    return spec


def _load_both(api: Api, gpu: GpuMemory, args: argparse.Namespace) -> tuple[int, int]:
    """Register and start both models (the second start sleeps the first): the free MiB with
    only the first awake, and the MiB an awake engine holds."""
    free_idle = gpu.free_mib()
    for model_id, model in zip(PAIR, (args.model_a, args.model_b), strict=True):
        api.call("POST", "/models", json=_spec(args, model_id, model))
    one_awake_free = 0
    for model_id in PAIR:
        wall_s, response = api.ask(model_id)
        if response.status_code != 200:
            raise RuntimeError(f"{model_id} did not start: {response.text[:500]}")
        print(f"cold start {model_id}: {wall_s:.1f} s, free {gpu.free_mib()} MiB")
        one_awake_free = one_awake_free or gpu.free_mib()
    if api.status(PAIR[0])["state"] != "sleeping":
        raise RuntimeError(f"{PAIR[0]} was not put to sleep for {PAIR[1]}'s start")
    return one_awake_free, free_idle - one_awake_free


def run_swaps(args: argparse.Namespace, api: Api, gpu: GpuMemory) -> list[Swap]:
    one_awake_free, awake_mib = _load_both(api, gpu, args)
    tolerance_mib = args.tolerance_mib or max(2048, gpu.total_mib() // 50)
    pids = {model_id: int(api.status(model_id)["pid"]) for model_id in PAIR}
    swaps, awake = [], PAIR[1]
    for number in range(1, args.swaps + 1):
        target = PAIR[0] if awake == PAIR[1] else PAIR[1]
        found = swap(api, gpu, target, awake, pids[target])
        _check_memory(
            found,
            one_awake_free_mib=one_awake_free,
            awake_mib=awake_mib,
            tolerance_mib=tolerance_mib,
        )
        _print_swap(number, found)
        swaps.append(found)
        awake = target
    return swaps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", required=True, help="the interpreter of CUDA vLLM")
    default_model = os.environ.get("GPU_SLEEP_CHECK_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("--model-a", default=default_model, help="hub id or local path")
    parser.add_argument("--model-b", default=None, help="default: the same as --model-a")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--gpu-memory-util", type=float, default=0.55)
    parser.add_argument("--sleep-level", type=int, choices=(1, 2), default=1)
    parser.add_argument("--extra-args", default="--enforce-eager", help="more vLLM flags")
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--tolerance-mib", type=int, default=0, help="default: 2%% of the GPU")
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a new temp dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.model_b = args.model_b or args.model_a
    gpu = GpuMemory()
    total_mib, margin_mib = (
        gpu.total_mib(),
        int(os.environ.get("GPU_ORCH_HEADROOM_MARGIN_MIB", 1024)),
    )
    required_mib = math.ceil(args.gpu_memory_util * total_mib) + margin_mib
    if 2 * required_mib <= total_mib:
        print(f"two models of {required_mib} MiB fit on {total_mib} MiB: raise --gpu-memory-util")
        return 2
    if gpu.free_mib() < required_mib:
        print(f"GPU 0 has {gpu.free_mib()} MiB free, one model needs {required_mib}: is it in use?")
        return 2
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="gpu-sleep-check-"))
    print(f"state and engine logs: {state_dir}")
    with orchestrator(args, state_dir) as api:
        swaps = run_swaps(args, api, gpu)
    failed = [number for number, found in enumerate(swaps, 1) if found.problems]
    walls = [found.wall_s for found in swaps]
    print(f"{len(swaps)} swaps, median {statistics.median(walls):.3f} s, max {max(walls):.3f} s")
    if failed:
        print(f"FAILED: swaps {failed}")
        return 1
    print("ok: every swap was served by a woken engine and every wake took its memory back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
