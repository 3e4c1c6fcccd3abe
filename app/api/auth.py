"""The bearer-token check, shared by the route dependency and the error handlers.

FastAPI parses a JSON body before it runs a route's dependencies, so a malformed body would answer
422 (echoing what was sent) before the token was ever looked at. The error handlers ask
`rejects_token` first, so a caller without the token learns nothing but 401 on a protected route.
"""

from __future__ import annotations

import secrets

from fastapi import Request
from fastapi.security.utils import get_authorization_scheme_param

from app.settings import Settings

# RFC 6750 section 3: a 401 names the scheme it wants.
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; "" for none or another scheme."""
    scheme, token = get_authorization_scheme_param(authorization)
    return token if scheme.lower() == "bearer" else ""


def token_accepted(settings: Settings, given: str) -> bool:
    """True when no token is configured or `given` matches it (compared in constant time)."""
    expected = settings.api_token
    if expected is None:
        return True
    return secrets.compare_digest(given.encode(), expected.encode())


def inference_token_accepted(settings: Settings, given: str) -> bool:
    """The gateway's rule: open when neither API_TOKEN nor INFERENCE_TOKENS is set; else the API
    token or any inference token (each compared in constant time, all of them compared)."""
    expected = [token for token in (settings.api_token, *settings.inference_tokens) if token]
    if not expected:
        return True
    matches = [secrets.compare_digest(given.encode(), token.encode()) for token in expected]
    return any(matches)


def operation_needs_token(request: Request) -> bool:
    """Whether the matched operation is protected, as the app's OpenAPI schema declares it."""
    path = getattr(request.scope.get("route"), "path_format", None)
    if path is None:
        return False
    operation = request.app.openapi().get("paths", {}).get(path, {}).get(request.method.lower())
    return bool(operation and operation.get("security"))


def rejects_token(request: Request) -> bool:
    """A protected operation called without the right token (for handlers that run before the
    route's own dependency could)."""
    settings: Settings = request.app.state.settings
    if settings.api_token is None or not operation_needs_token(request):
        return False
    return not token_accepted(settings, bearer_token(request.headers.get("authorization")))
