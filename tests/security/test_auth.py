"""The bearer token: every route but the probes answers 401 without it, on reads too, before the
body is even looked at; Swagger UI's Authorize button has a scheme to fill in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.orchestrator.engine_command import build_env
from app.orchestrator.spec import ModelSpec
from tests.conftest import MakeSettings, running_app

TOKEN = "s3cret"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
BAD_HEADERS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
]
OPEN_PATHS = {"/healthz", "/readyz"}
SPEC: dict[str, Any] = {"id": "tiny", "model": "/models/tiny", "gpu_memory_util": 0.5}
# Routes the schema must list, so the walk below cannot pass by finding nothing.
EXPECTED_PROTECTED = {
    ("get", "/models"),
    ("post", "/models"),
    ("get", "/models/{model_id}"),
    ("put", "/models/{model_id}"),
    ("patch", "/models/{model_id}"),
    ("delete", "/models/{model_id}"),
    ("post", "/models/{model_id}/start"),
    ("post", "/models/{model_id}/stop"),
    ("post", "/models/{model_id}/restart"),
    ("get", "/models/{model_id}/logs"),
    ("get", "/models/{model_id}/events"),
    ("get", "/gpus"),
    ("get", "/metrics"),
    ("get", "/models/{model_id}/adapters"),
    ("post", "/models/{model_id}/adapters"),
    ("delete", "/models/{model_id}/adapters/{name}"),
    ("get", "/v1/models"),
    ("post", "/v1/{path}"),
}


@pytest.fixture
async def authed(make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(api_token=TOKEN)) as (_app, http):
        yield http


async def operations(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    schema = (await client.get("/openapi.json")).json()
    return [(method, path) for path, ops in schema["paths"].items() for method in ops]


def request_for(method: str, path: str) -> tuple[str, str, dict[str, Any] | None]:
    url = path.replace("{model_id}", "tiny").replace("{name}", "an_adapter")
    url = url.replace("{path}", "chat/completions")
    body: dict[str, Any] | None = None
    if method in ("put", "patch"):
        body = {"model": "/models/other"}
    elif method == "post" and path == "/models":
        body = {**SPEC, "id": "intruder"}
    elif method == "post" and path.startswith("/v1/"):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    elif method == "post" and path.endswith("/adapters"):
        body = {"name": "an_adapter", "path": "/adapters/a"}
    return method.upper(), url, body


def assert_challenged(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers.get("www-authenticate") == "Bearer"
    if response.request.url.path.startswith("/v1/"):
        # The gateway answers in OpenAI's shape, so OpenAI SDKs raise AuthenticationError.
        assert response.json()["error"]["code"] == "invalid_api_key"
        return
    assert response.json()["detail"]["code"] == "unauthorized"


async def test_auth_every_route_but_probes_refuses_missing_or_wrong_token(
    authed: httpx.AsyncClient,
) -> None:
    assert (await authed.post("/models", json=SPEC, headers=GOOD)).status_code == 201
    listed = await operations(authed)
    assert set(listed) >= EXPECTED_PROTECTED
    for method, path in listed:
        if path in OPEN_PATHS:
            continue
        verb, url, body = request_for(method, path)
        for headers in BAD_HEADERS:
            assert_challenged(await authed.request(verb, url, json=body, headers=headers))
    # Nothing the refused calls asked for happened.
    models = (await authed.get("/models", headers=GOOD)).json()
    assert [(m["id"], m["model"], m["status"]["desired_state"]) for m in models] == [
        ("tiny", "/models/tiny", "stopped")
    ]


async def test_auth_right_token_reads_and_writes(authed: httpx.AsyncClient) -> None:
    assert (await authed.post("/models", json=SPEC, headers=GOOD)).status_code == 201
    assert (await authed.get("/models/tiny", headers=GOOD)).json()["id"] == "tiny"
    lower_scheme = {"Authorization": f"bearer {TOKEN}"}  # RFC 7235: the scheme is case-blind
    patched = await authed.patch("/models/tiny", json={"max_model_len": 64}, headers=lower_scheme)
    assert patched.status_code == 200 and patched.json()["max_model_len"] == 64
    assert (await authed.get("/gpus", headers=GOOD)).status_code == 200
    assert (await authed.get("/metrics", headers=GOOD)).status_code == 200
    assert (await authed.delete("/models/tiny", headers=GOOD)).status_code == 204


async def test_auth_probes_docs_and_schema_are_open(authed: httpx.AsyncClient) -> None:
    assert (await authed.get("/healthz")).json() == {"status": "ok"}
    assert (await authed.get("/readyz")).json() == {"status": "ready"}
    # They hold no data: the schema and the Swagger page that asks for the token.
    assert (await authed.get("/openapi.json")).status_code == 200
    assert (await authed.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("content", "path", "method"),
    [
        (b'{"id":', "/models", "POST"),
        (b"\xff\xfe not utf-8", "/models", "POST"),
        (b'{"model": NaN}', "/models/tiny", "PUT"),
        (b"[", "/models/tiny", "PATCH"),
        (b"{}", "/models/NOT_A_SLUG", "PATCH"),
    ],
)
async def test_auth_is_checked_before_the_body_or_path_is_judged(
    authed: httpx.AsyncClient, content: bytes, path: str, method: str
) -> None:
    headers = {"Content-Type": "application/json"}
    response = await authed.request(method, path, content=content, headers=headers)
    assert_challenged(response)
    assert "input" not in response.text  # nothing of what was sent is echoed back


async def test_auth_metrics_public_opens_only_metrics(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(api_token=TOKEN, metrics_public=True)) as (_app, http):
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200 and "gpu_orchestrator_" in metrics.text
        assert_challenged(await http.get("/models"))
        assert_challenged(await http.get("/gpus"))


async def test_auth_openapi_declares_bearer_scheme_on_protected_operations(
    authed: httpx.AsyncClient,
) -> None:
    schema = (await authed.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    bearer_names = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "http" and scheme["scheme"] == "bearer"
    ]
    assert bearer_names, schemes
    for path, ops in schema["paths"].items():
        for method, operation in ops.items():
            security = operation.get("security", [])
            if path in OPEN_PATHS:
                assert security == [], (method, path)
            else:
                assert any(set(item) & set(bearer_names) for item in security), (method, path)
            if path.startswith(("/models", "/gpus")):
                assert "401" in operation["responses"], (method, path)


def test_auth_token_never_reaches_an_engine_environment() -> None:
    spec = ModelSpec(id="tiny", model="/models/tiny")
    parent = {"PATH": "/usr/bin", "GPU_ORCH_API_TOKEN": TOKEN, "GPU_ORCH_DATABASE_URL": "x"}
    env = build_env(
        spec, parent_env=parent, engine_env={}, gpu_ids=[0], adapters=[], launch_token="t"
    )
    assert env["PATH"] == "/usr/bin"
    assert not any(TOKEN in value for value in env.values())
    assert "GPU_ORCH_API_TOKEN" not in env and "GPU_ORCH_DATABASE_URL" not in env
