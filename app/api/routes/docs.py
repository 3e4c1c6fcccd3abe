"""Swagger UI at /docs and ReDoc at /redoc, from files that ship with the service.

FastAPI's own pages load their JavaScript and CSS from a public CDN, which leaves a GPU node
without internet access with a blank page. The assets come from the `fastapi-offline` package
(Swagger UI's bundle and CSS, ReDoc's standalone bundle, a favicon), mounted at ASSETS_URL; the
pages are FastAPI's, pointed there. A Content-Security-Policy of 'self' makes the browser refuse
any other host, should a later asset version try one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs/assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Swagger UI's validator badge fetches an image from validator.swagger.io; off.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None, "persistAuthorization": True}
# The pages' own bootstrap is an inline script and ReDoc styles itself inline; everything they
# load must come from this service. ReDoc runs its search index in a worker made from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def _root(request: Request) -> str:
    """The proxy's root path, if the service sits below one ("" otherwise)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _openapi_url(request: Request) -> str:
    return f"{_root(request)}{request.app.openapi_url or '/openapi.json'}"


@router.api_route(DOCS_URL, methods=["GET", "HEAD"])
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    assets = f"{root}{ASSETS_URL}"
    return _secured(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return _secured(get_swagger_ui_oauth2_redirect_html())


@router.api_route(REDOC_URL, methods=["GET", "HEAD"])
async def redoc(request: Request) -> HTMLResponse:
    assets = f"{_root(request)}{ASSETS_URL}"
    return _secured(
        get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
    )
