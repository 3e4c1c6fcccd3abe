"""The operator console: GET /ui (and / redirecting there), its assets, and the figures it needs
that no other route gives (the low-memory threshold).

The page and its assets are static and hold no data, so they load without a token (a browser
cannot send a bearer header on navigation); every figure on the page comes from the protected
API (/models, /gpus, /events, /ui/config) with the token the operator enters once, kept in the
browser's sessionStorage. Everything it loads is from this service: the Content-Security-Policy
says so to the browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse

from app.api.deps import SettingsDep, require_token

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "static" / "console"
CONSOLE_URL = "/ui"
ASSETS_URL = "/ui/assets"
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def root(request: Request) -> RedirectResponse:
    root_path = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{root_path}{CONSOLE_URL}", status_code=307)


@router.api_route(CONSOLE_URL, methods=["GET", "HEAD"])
async def console() -> FileResponse:
    headers = {"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-cache"}
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers=headers)


@router.get(f"{CONSOLE_URL}/config", dependencies=[Depends(require_token)])
async def console_config(settings: SettingsDep) -> dict[str, Any]:
    """What the GPU bars draw beside /gpus: the low-memory alert's threshold."""
    return {
        "low_memory_threshold_mib": settings.low_memory_threshold_mib,
        "low_memory_threshold_pct": settings.low_memory_threshold_pct,
        "low_memory_samples": settings.low_memory_samples,
        "monitor_interval_s": settings.monitor_interval_s,
    }
