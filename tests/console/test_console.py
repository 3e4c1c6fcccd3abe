"""The console (/ui) in Debian's Chromium, against a real uvicorn with the fake engine: it lists
the models, follows /events without a reload, asks for the token once per browser session, and
loads nothing from another host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from app.main import create_app
from tests.api.live_server import LiveServer, live_server
from tests.conftest import MakeSettings
from tests.console.browser import PageFactory, chromium, pages, require_chromium
from tests.console.screenshot import STARTED, screenshot

TOKEN = "console-token"
SPEC = {"model": "/models/tiny", "gpu_memory_util": 0.3}
# Records every state a model's row shows, so a test sees `starting` even if it was brief.
WATCH_STATES = """modelId => {
  window.__states = [];
  const seen = () => {
    const row = document.querySelector(`tr[data-model="${modelId}"]`);
    const state = row && row.dataset.state;
    if (state && window.__states[window.__states.length - 1] !== state) window.__states.push(state);
  };
  seen();
  new MutationObserver(seen).observe(document.querySelector('#models tbody'),
    {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with chromium() as running:
        yield running


@pytest.fixture
def server(make_settings: MakeSettings) -> Iterator[LiveServer]:
    with live_server(create_app(make_settings())) as running:
        yield running


@pytest.fixture
def new_page(browser: Browser, server: LiveServer) -> Iterator[PageFactory]:
    """Pages closed before the server stops (the fixture depends on it, so ends first)."""
    with pages(browser) as factory:
        yield factory


def register(server: LiveServer, *specs: dict[str, object], token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=20) as http:
        for spec in specs:
            assert http.post("/models", json={**SPEC, **spec}).status_code == 201


def test_console_lists_the_registered_models_and_gpus(
    server: LiveServer, new_page: PageFactory
) -> None:
    register(server, {"id": "alpha"}, {"id": "beta", "port": 24999})
    recorded = new_page()
    page = recorded.page
    page.goto(f"{server.url}/")  # redirects to /ui
    page.wait_for_selector('tr[data-model="beta"]')
    assert page.url == f"{server.url}/ui"
    rows = page.eval_on_selector_all("#models tbody tr", "rows => rows.map(r => r.dataset.model)")
    assert rows == ["alpha", "beta"]
    assert page.inner_text('tr[data-model="alpha"] [data-field="state"]') == "stopped"
    assert page.inner_text('tr[data-model="alpha"] [data-field="desired"]') == "stopped"
    # One bar per simulated GPU, with the low-memory threshold drawn on it.
    page.wait_for_selector(".gpu .bar .threshold")
    assert page.locator(".gpu").count() == 2
    assert "alert under 2048 MiB free" in page.inner_text('.gpu[data-gpu="0"]')
    assert recorded.foreign_requests() == []
    assert recorded.errors == []


def test_console_start_goes_starting_then_running_without_a_reload(
    server: LiveServer, new_page: PageFactory
) -> None:
    register(server, {"id": "slow-start", "env": {"FAKE_ENGINE_ARGS": "--ready-delay-s 1.0"}})
    recorded = new_page()
    page = recorded.page
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(f"{server.url}/ui")
    page.wait_for_selector('tr[data-model="slow-start"][data-state="stopped"]')
    page.wait_for_selector("#connection[data-state='live']")
    page.evaluate(WATCH_STATES, "slow-start")
    page.evaluate("window.__sameDocument = true")
    page.click('tr[data-model="slow-start"] button[data-action="start"]')
    page.wait_for_selector('tr[data-model="slow-start"][data-state="running"]')
    states = page.evaluate("window.__states")
    assert states[0] == "stopped" and states[-1] == "running"
    assert "starting" in states and states.index("starting") < states.index("running")
    assert page.evaluate("window.__sameDocument") is True
    assert navigations == [f"{server.url}/ui"]
    row = 'tr[data-model="slow-start"]'
    assert page.inner_text(f'{row} [data-field="desired"]') == "running"
    assert page.inner_text(f'{row} [data-field="pid"]').isdigit()
    assert page.is_disabled(f'{row} button[data-action="start"]')
    # The event list shows the transitions as they came.
    assert "starting -> running" in page.inner_text("#events")
    # The log view shows the engine's output and follows it.
    page.click(f'{row} button[data-action="logs"]')
    page.wait_for_function("() => document.querySelector('#log').textContent.includes('Uvicorn')")
    page.click(f'{row} button[data-action="stop"]')
    page.wait_for_selector(f'{row}[data-state="stopped"]')
    assert recorded.errors == []


def test_console_shows_a_refused_start_with_the_apis_message(
    server: LiveServer, new_page: PageFactory
) -> None:
    register(server, {"id": "too-big", "gpu_memory_util": 1.0})
    page = new_page().page
    page.goto(f"{server.url}/ui")
    page.click('tr[data-model="too-big"] button[data-action="start"]')
    page.wait_for_selector("#notice:not([hidden])")
    assert "insufficient_gpu_memory" in page.inner_text("#notice")


def test_console_asks_for_the_token_once_per_browser_session(
    browser: Browser, make_settings: MakeSettings
) -> None:
    with (
        live_server(create_app(make_settings(api_token=TOKEN))) as server,
        pages(browser) as new_page,
    ):
        register(server, {"id": "guarded"}, token=TOKEN)
        recorded = new_page()
        page = recorded.page
        page.goto(f"{server.url}/ui")
        page.wait_for_selector("#token-form:not([hidden])")
        assert page.locator("#models tbody tr").count() == 0
        page.fill("#token-input", "wrong")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector('tr[data-model="guarded"]')
        assert page.is_hidden("#token-form")
        # Kept for the tab's session: a reload does not ask again.
        page.reload()
        page.wait_for_selector('tr[data-model="guarded"]')
        assert page.is_hidden("#token-form")
        assert page.evaluate("sessionStorage.length") == 1
        # A new browser session starts without it.
        fresh = new_page().page
        fresh.goto(f"{server.url}/ui")
        fresh.wait_for_selector("#token-form:not([hidden])")


def test_console_screenshot_shows_a_busy_node(browser: Browser, tmp_path: Path) -> None:
    shot = screenshot(tmp_path / "console.png", browser)
    assert shot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.states == {**STARTED, "phi-3-mini": "stopped"}
    assert shot.errors == [] and shot.foreign_requests == []
