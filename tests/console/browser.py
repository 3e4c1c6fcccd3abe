"""Debian's Chromium driven by Playwright (never a downloaded browser), with every host but this
machine unresolvable: a page that tried to load anything from the internet would show it.

    with chromium() as browser:
        recorded = open_page(browser)
        recorded.page.goto(url)
        assert recorded.foreign_requests() == []
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

CHROMIUM = Path(os.environ.get("GPU_ORCH_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without these Chromium reaches out to Google's services at start-up; the resolver rule turns
# every other host into "not found", as on a GPU node without internet access.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
LOCAL_HOSTS = {"127.0.0.1"}
PAGE_TIMEOUT_MS = 20_000


def require_chromium() -> None:
    """Skip where no Chromium is installed, except in CI, where that is a failure:
    scripts/test-deps.sh installs it."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: run scripts/test-deps.sh (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class RecordedPage:
    """A page in a fresh browser context (its own sessionStorage), with every URL it requested
    and every script error or console error it showed."""

    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # URL -> why it failed

    def csp_blocked(self) -> set[str]:
        """URLs the page's Content-Security-Policy refused: never sent."""
        return {url for url, why in self.failures.items() if why == "csp"}

    def foreign_requests(self) -> list[str]:
        """Requests sent to any host but this machine (data: and blob: URLs are local; what the
        CSP refused never left the browser)."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in ("data", "blob")
            and urlsplit(url).hostname not in LOCAL_HOSTS
            and url not in self.csp_blocked()
        ]


def open_page(browser: Browser, *, width: int = 1400, height: int = 900) -> RecordedPage:
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-GB")
    recorded = RecordedPage(context.new_page())
    page = recorded.page
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.on("request", lambda request: recorded.requests.append(request.url))
    page.on("pageerror", lambda error: recorded.errors.append(str(error)))

    def on_failure(request: Request) -> None:
        recorded.failures.setdefault(request.url, request.failure or "failed")

    page.on("requestfailed", on_failure)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            recorded.errors.append(message.text)

    page.on("console", on_console)
    return recorded


PageFactory = Callable[[], RecordedPage]


@contextmanager
def pages(browser: Browser) -> Iterator[PageFactory]:
    """Opens pages; closes them all at the end, so no event stream outlives the test's server
    (uvicorn would wait for it before it shuts down)."""
    opened: list[RecordedPage] = []

    def new_page() -> RecordedPage:
        opened.append(open_page(browser))
        return opened[-1]

    try:
        yield new_page
    finally:
        for recorded in opened:
            recorded.page.context.close()
