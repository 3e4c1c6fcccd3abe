"""Swagger UI (/docs) and ReDoc (/redoc) render in Chromium with every other host unresolvable,
as on a GPU node without internet access, and request nothing from anywhere else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from app.main import create_app
from tests.api.live_server import LiveServer, live_server
from tests.conftest import MakeSettings
from tests.console.browser import PageFactory, chromium, pages, require_chromium

# ReDoc's bundle always draws its "API docs by Redocly" logo from its CDN (no option turns that
# off); the page's Content-Security-Policy refuses it, so it is never fetched, and ReDoc hides the
# broken image by itself.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


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
    with pages(browser) as factory:
        yield factory


def test_docs_swagger_ui_renders_offline(server: LiveServer, new_page: PageFactory) -> None:
    recorded = new_page()
    page = recorded.page
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path")
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path || n.textContent)"
    )
    assert any("/models/{model_id}/start" in path for path in paths), paths
    assert page.inner_text(".swagger-ui .info .title").startswith("gpu-orchestrator")
    # The Authorize button is there for the bearer token.
    assert page.locator(".swagger-ui .btn.authorize").count() == 1
    assert recorded.foreign_requests() == []
    assert recorded.errors == []


def test_docs_redoc_renders_offline(server: LiveServer, new_page: PageFactory) -> None:
    recorded = new_page()
    page = recorded.page
    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("h1:has-text('gpu-orchestrator')")
    page.wait_for_selector("[data-section-id^='tag/lifecycle']")
    assert recorded.foreign_requests() == []
    assert recorded.csp_blocked() <= {REDOC_LOGO}
    assert [error for error in recorded.errors if REDOC_LOGO not in error] == []
