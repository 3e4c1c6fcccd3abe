"""A screenshot of the console on a busy node: `make console-screenshot` writes docs/console.png
with it, and a test takes the same one, so the picture cannot drift from the page.

    python -m tests.console.screenshot docs/console.png

The node: two simulated 80 GiB GPUs and the fake engine standing in for vLLM; one model running,
one still loading (its GPU memory reserved), one degraded because its KV cache does not fit (with
the remedy), one stopped.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser

from app.main import create_app
from app.settings import Settings, load_settings
from tests.api.live_server import live_server
from tests.conftest import TEST_MARKER, kill_engines_of
from tests.console.browser import chromium, open_page
from tests.fakes import fake_engine_command

SCENE: list[dict[str, Any]] = [
    {"id": "llama-3-8b", "model": "meta-llama/Meta-Llama-3-8B-Instruct", "gpu_memory_util": 0.45},
    {
        "id": "qwen2-7b",
        "model": "Qwen/Qwen2-7B-Instruct",
        "gpu_memory_util": 0.4,
        "env": {"FAKE_ENGINE_ARGS": "--ready-delay-s 600"},
    },
    {
        "id": "mixtral-8x7b",
        "model": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "gpu_memory_util": 0.35,
        "env": {"FAKE_ENGINE_ARGS": "--oom-during-start --oom-kind kv_cache_insufficient"},
    },
    {"id": "phi-3-mini", "model": "microsoft/Phi-3-mini-4k-instruct", "gpu_memory_util": 0.2},
]
STARTED = {"llama-3-8b": "running", "qwen2-7b": "starting", "mixtral-8x7b": "degraded"}


def scene_settings(root: Path) -> Settings:
    ports_start = 33000 + (os.getpid() % 40) * 40
    return load_settings(
        state_dir=root / "state",
        config_dir=root / "config",
        gpu_backend="simulated",
        simulated_gpus=[81920, 81920],
        launcher="subprocess",
        vllm_command=fake_engine_command(),
        port_range_start=ports_start,
        port_range_end=ports_start + 39,
        stop_grace_s=5.0,
        monitor_interval_s=3600.0,
        stop_engines_on_shutdown=True,
        engine_env={TEST_MARKER: str(root)},
    )


def wait_state(http: httpx.Client, model_id: str, state: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while http.get(f"/models/{model_id}").json()["status"]["state"] != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model_id} is not {state} after {timeout_s} s")
        time.sleep(0.05)


def populate(http: httpx.Client) -> None:
    for spec in SCENE:
        http.post("/models", json=spec).raise_for_status()
    for model_id, state in STARTED.items():
        http.post(f"/models/{model_id}/start").raise_for_status()
        wait_state(http, model_id, state)


@dataclass
class Shot:
    path: Path
    states: dict[str, str]  # model id -> the state its row shows
    errors: list[str]
    foreign_requests: list[str]


def take(browser: Browser, url: str, http: httpx.Client, path: Path) -> Shot:
    """Open the console at `url`, build the scene while it watches (its event list fills as the
    events come), wait until every row and GPU bar is drawn, save the PNG."""
    recorded = open_page(browser, width=1500, height=1100)
    page = recorded.page
    try:
        page.goto(f"{url}/ui")
        page.wait_for_selector("#connection[data-state='live']")
        populate(http)
        for model_id, state in STARTED.items():
            page.wait_for_selector(f'tr[data-model="{model_id}"][data-state="{state}"]')
        page.wait_for_selector('.gpu[data-gpu="1"] .bar .reserved')
        page.click('tr[data-model="llama-3-8b"] button[data-action="logs"]')
        page.wait_for_function("() => document.querySelector('#log').textContent.length > 0")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        states = page.eval_on_selector_all(
            "#models tbody tr",
            "rows => Object.fromEntries(rows.map(r => [r.dataset.model, r.dataset.state]))",
        )
    finally:
        page.context.close()  # before the server stops: its event stream ends with the page
    return Shot(path, states, recorded.errors, recorded.foreign_requests())


def screenshot(path: Path, browser: Browser) -> Shot:
    with tempfile.TemporaryDirectory(prefix="console-shot-") as scratch:
        root = Path(scratch)
        try:
            with (
                live_server(create_app(scene_settings(root))) as server,
                httpx.Client(base_url=server.url, timeout=30) as http,
            ):
                return take(browser, server.url, http, path)
        finally:
            kill_engines_of(root)


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "docs/console.png")
    with chromium() as browser:
        shot = screenshot(target, browser)
    print(f"wrote {shot.path} ({', '.join(f'{k}: {v}' for k, v in shot.states.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
