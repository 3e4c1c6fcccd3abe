"""Hostile input: every bad value is a 4xx naming its field, on POST, PUT and PATCH, and nothing is
stored. Complements the POST cases of tests/api/test_models_api.py; the cases marked "fuzz" are
what schemathesis (or probing around it) found, kept as regressions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import MakeSettings, running_app

SPEC: dict[str, Any] = {"id": "tiny", "model": "/models/tiny", "gpu_memory_util": 0.5}
JSON = {"Content-Type": "application/json"}
MAX_BODY_BYTES = 4096


async def create_tiny(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/models", json=SPEC)
    assert response.status_code == 201, response.text
    stored: dict[str, Any] = response.json()
    stored.pop("status")
    return stored


async def assert_unchanged(client: httpx.AsyncClient, before: dict[str, Any]) -> None:
    now = (await client.get("/models/tiny")).json()
    now.pop("status")
    assert now == before
    assert [item["id"] for item in (await client.get("/models")).json()] == ["tiny"]


def assert_names_field(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    locations = [item["loc"] for item in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations


async def assert_refused_everywhere(client: httpx.AsyncClient, field: str, value: Any) -> None:
    """The value is refused by POST, PUT and PATCH, naming `field`; the stored spec is kept."""
    before = await create_tiny(client)
    posted = await client.post("/models", json={**SPEC, "id": "other", field: value})
    assert_names_field(posted, field)
    put_body = {key: item for key, item in SPEC.items() if key != "id"}
    assert_names_field(await client.put("/models/tiny", json={**put_body, field: value}), field)
    assert_names_field(await client.patch("/models/tiny", json={field: value}), field)
    await assert_unchanged(client, before)


@pytest.mark.parametrize(
    "model_id",
    ["..", "abc\n", "\u0430bc", "\uff41bc", "a b", "", "a" * 64, "-abc", ".abc", "a\\b", "a\x00b"],
)
async def test_hostile_id_in_body_is_422_and_stores_nothing(
    client: httpx.AsyncClient, model_id: str
) -> None:
    assert_names_field(await client.post("/models", json={**SPEC, "id": model_id}), "id")
    assert (await client.get("/models")).json() == []


async def test_hostile_id_cannot_be_changed_by_put_or_patch(client: httpx.AsyncClient) -> None:
    before = await create_tiny(client)
    assert_names_field(await client.patch("/models/tiny", json={"id": "../x"}), "id")
    assert_names_field(await client.put("/models/tiny", json={"model": "m", "id": "x"}), "id")
    await assert_unchanged(client, before)


PATH_SUFFIXES = ["", "/start", "/stop", "/restart", "/logs", "/events", "/can-start"]


@pytest.mark.parametrize(
    "bad_id",
    ["UPPER", "a;b", "%2E%2E", "abc%0A", "%D0%B0bc", "%EF%BD%81bc", "-x", "a%20b", "x" * 64],
)
async def test_hostile_path_id_is_422_on_every_model_route(
    client: httpx.AsyncClient, bad_id: str
) -> None:
    before = await create_tiny(client)
    for suffix in PATH_SUFFIXES:
        methods = ["POST"] if suffix in ("/start", "/stop", "/restart") else ["GET"]
        if suffix == "":
            methods += ["PUT", "PATCH", "DELETE"]
        for method in methods:
            body = {"model": "m"} if method in ("PUT", "PATCH") else None
            response = await client.request(method, f"/models/{bad_id}{suffix}", json=body)
            assert response.status_code == 422, (method, suffix, response.text)
            assert ["path", "model_id"] in [item["loc"] for item in response.json()["detail"]]
    await assert_unchanged(client, before)


async def test_hostile_path_id_with_encoded_slash_finds_no_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/models/a%2F..%2Fb/logs")
    assert response.status_code in (404, 422), response.text


@pytest.mark.parametrize(
    "paths", [["/srv/a/../../etc"], [".."], ["a/.."], ["x:y"], ["a\nb"], ["a\x00b"], [""]]
)
async def test_hostile_adapter_paths_are_refused(
    client: httpx.AsyncClient, paths: list[str]
) -> None:
    await assert_refused_everywhere(client, "adapter_paths", paths)


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "9"],
        ["--port=9"],
        ["--model=/elsewhere"],
        ["--host", "0.0.0.0"],
        ["--gpu_memory_utilization=1.0"],  # vLLM reads '_' as '-' in flag names
        ["--served_model_name", "x"],
        ["--hos", "0.0.0.0"],  # argparse takes a unique prefix for the flag
        ["--gpu-memory-util=1"],
        ["-tp", "8"],
        ["-tp8"],
        ["--tensor-parallel-size=8"],
        ["--config", "/tmp/any.yaml"],  # a config file may set every owned flag
        ["--api-key=k"],
        ["--uds=/tmp/sock"],
        ["--enable-lora"],
        ["--max-loras=9"],
        ["-t", "8"],  # argparse reads a short flag's unique prefix too
        ["-pp", "2"],  # more GPUs than placement reserves
        ["--data-parallel-size=2"],
    ],
)
async def test_hostile_extra_args_setting_owned_flags_are_refused(
    client: httpx.AsyncClient, args: list[str]
) -> None:
    await assert_refused_everywhere(client, "extra_args", args)


async def test_hostile_extra_args_check_keeps_engine_flags_of_its_own(
    client: httpx.AsyncClient,
) -> None:
    args = ["--enforce-eager", "--max-num-seqs", "8", "--enable-lora-bias", "--trust-remote-code"]
    response = await client.post("/models", json={**SPEC, "extra_args": args})
    assert response.status_code == 201, response.text
    assert response.json()["extra_args"] == args


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "DYLD_INSERT_LIBRARIES",
        "VLLM_ADAPTER_PATHS",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",  # the orchestrator numbers GPUs in PCI bus order, as NVML does
        "VLLM_DP_SIZE",  # vLLM reads a data-parallel size from it
        "GPU_ORCH_LAUNCH_TOKEN",
        "ld_preload",
        "Ld_Library_Path",
        "pythonpath",
        "cuda_visible_devices",
        "vllm_adapter_paths",
        "dyld_insert_libraries",
        "A=B",
        "1A",
        "A B",
        "",
    ],
)
async def test_hostile_env_names_are_refused(client: httpx.AsyncClient, name: str) -> None:
    await assert_refused_everywhere(client, "env", {name: "/tmp/x"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", -1),
        ("max_model_len", -5),
        ("tensor_parallel_size", -1),
        ("start_timeout_s", -1),
        ("gpu_memory_util", -0.1),
        ("restart_policy", {"backoff_max_s": -1}),
        ("extra_args", "--enforce-eager"),  # a string, not a list of argv tokens
        ("adapter_paths", "/a"),
        ("env", ["A"]),
        ("env", {"A": 1}),
        ("restart_policy", 5),
        ("port", "eighty"),
        ("tensor_parallel_size", 1.5),
        ("dtype", 1),
    ],
)
async def test_hostile_negative_numbers_and_wrong_types_are_refused(
    client: httpx.AsyncClient, field: str, value: Any
) -> None:
    await assert_refused_everywhere(client, field, value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/models", '{"id": "other", "model": "m", "gpu_memory_util": %s}'),
        ("PUT", "/models/tiny", '{"model": "m", "gpu_memory_util": %s}'),
        ("PATCH", "/models/tiny", '{"gpu_memory_util": %s}'),
        ("PATCH", "/models/tiny", '{"restart_policy": {"backoff_factor": %s}}'),
        ("PATCH", "/models/tiny", '{"start_timeout_s": %s}'),
    ],
)
async def test_hostile_nan_and_infinity_literals_are_422_not_500(
    client: httpx.AsyncClient, literal: str, method: str, path: str, template: str
) -> None:
    # fuzz: echoing a NaN input back in the 422 body used to fail JSON encoding (a 500).
    before = await create_tiny(client)
    response = await client.request(method, path, content=template % literal, headers=JSON)
    assert response.status_code == 422, response.text
    assert "NaN" not in response.text and "Infinity" not in response.text  # strict JSON
    await assert_unchanged(client, before)


def strings_in(value: Any) -> list[str]:
    """Every string in a decoded JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *strings_in(item)]]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        ("model", '"model": "%s"'),
        ("model", '"model": "a%sb"'),
        ("env", '"env": {"A": "%s"}'),
        ("env", '"env": {"A%s": "x"}'),  # in a key, which the 422 echoes in its loc
        ("extra_args", '"extra_args": ["%s"]'),
        ("adapter_names", '"adapter_paths": ["/a"], "adapter_names": {"/a": "%s"}'),
    ],
)
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ude00\\ud83d"])
async def test_hostile_lone_surrogate_escape_is_422_naming_the_field(
    client: httpx.AsyncClient, field: str, fragment: str, escape: str
) -> None:
    # fuzz: JSON may spell a lone UTF-16 surrogate (`"\ud800"`, or a pair in the wrong order),
    # which Python decodes but UTF-8 cannot encode: echoing it back in the 422 raised, a 500.
    before = await create_tiny(client)
    fields = fragment % escape
    base = "" if field == "model" else '"model": "m", '
    bodies = [
        ("POST", "/models", '{"id": "other", ' + base + fields + "}"),
        ("PUT", "/models/tiny", "{" + base + fields + "}"),
        ("PATCH", "/models/tiny", "{" + fields + "}"),
    ]
    for method, path, body in bodies:
        response = await client.request(method, path, content=body, headers=JSON)
        assert_names_field(response, field)
        # The client's input comes back as the escape it sent.
        assert any(escape in text for text in strings_in(response.json())), response.text
    await assert_unchanged(client, before)


async def test_hostile_surrogate_pair_escape_is_a_character_not_an_error(
    client: httpx.AsyncClient,
) -> None:
    body = '{"id": "emoji", "model": "m-\\ud83d\\ude00"}'
    response = await client.post("/models", content=body, headers=JSON)
    assert response.status_code == 201, response.text
    assert response.json()["model"] == "m-\U0001f600"


@pytest.mark.parametrize(
    "content",
    [b"{", b"not json", b"", b"[]", b"null", b'"x"', b"\xff\xfe", b"[" * 100_000, b'{"a":' * 3000],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/models"), ("PATCH", "/models/tiny")])
async def test_hostile_malformed_json_is_400_or_422_never_500(
    client: httpx.AsyncClient, content: bytes, method: str, path: str
) -> None:
    before = await create_tiny(client)
    response = await client.request(method, path, content=content, headers=JSON)
    assert response.status_code in (400, 422), response.text
    # fuzz: a body that is not UTF-8 answered {"detail": "..."}: now the documented error shape.
    detail = response.json()["detail"]
    assert isinstance(detail, list) or detail["code"] == "bad_request", detail
    await assert_unchanged(client, before)


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/models/tiny/logs", "tail=0"),
        ("/models/tiny/logs", "tail=abc"),
        ("/models/tiny/events", "limit=100000"),
        ("/models/tiny/start", "force=maybe"),
        ("/models/tiny", "force=2"),
    ],
)
async def test_hostile_query_values_are_422_naming_them(
    client: httpx.AsyncClient, path: str, query: str
) -> None:
    before = await create_tiny(client)
    method = "GET" if path.endswith(("/logs", "/events")) else "POST"
    method = "DELETE" if path == "/models/tiny" else method
    response = await client.request(method, f"{path}?{query}")
    assert_names_field(response, query.split("=")[0])
    await assert_unchanged(client, before)


async def test_hostile_put_and_patch_answer_field_errors_in_one_shape(
    client: httpx.AsyncClient,
) -> None:
    # fuzz: a rule spanning fields answered {"code": "invalid_spec"} on PUT/PATCH but a list on
    # POST, while the schema documented only the list.
    before = await create_tiny(client)
    response = await client.patch("/models/tiny", json={"adapter_names": {"/a": "a"}})
    assert_names_field(response, "body")
    assert "adapter_names" in response.text
    assert_names_field(await client.patch("/models/tiny", json={"model": None}), "model")
    await assert_unchanged(client, before)


async def test_hostile_unknown_route_and_method_use_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["detail"]["code"] == "not_found"
    wrong = await client.delete("/gpus")
    assert wrong.status_code == 405 and wrong.json()["detail"]["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


async def test_hostile_start_with_unreadable_adapter_matches_documented_422(
    client: httpx.AsyncClient,
) -> None:
    # fuzz: start answered 422 adapter_invalid, a shape the schema did not document.
    spec = {**SPEC, "adapter_paths": ["relative/adapter"]}
    assert (await client.post("/models", json=spec)).status_code == 201
    response = await client.post("/models/tiny/start")
    assert response.status_code == 422 and response.json()["detail"]["code"] == "adapter_invalid"
    schema = (await client.get("/openapi.json")).json()
    documented = schema["paths"]["/models/{model_id}/start"]["post"]["responses"]["422"]
    assert "UnprocessablePublic" in json.dumps(documented)
    assert (await client.get("/models/tiny")).json()["status"]["state"] == "stopped"


@pytest.fixture
async def small_limit(make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(max_body_bytes=MAX_BODY_BYTES)
    async with running_app(settings) as (_app, http):
        yield http


def oversized_body(**fields: Any) -> bytes:
    return json.dumps({**fields, "extra_args": ["--x"] * MAX_BODY_BYTES}).encode()


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("method", "path", "fields"),
    [
        ("POST", "/models", {"id": "big", "model": "m"}),
        ("PUT", "/models/tiny", {"model": "m"}),
        ("PATCH", "/models/tiny", {}),
    ],
)
async def test_hostile_body_over_limit_is_413_and_stores_nothing(
    small_limit: httpx.AsyncClient,
    chunked: bool,
    method: str,
    path: str,
    fields: dict[str, Any],
) -> None:
    # fuzz: a chunked body over the limit answered 400 (the framework's body parser saw the
    # middleware's error), not 413.
    before = await create_tiny(small_limit)
    body = oversized_body(**fields)
    content: bytes | AsyncIterator[bytes] = chunks(body) if chunked else body
    response = await small_limit.request(method, path, content=content, headers=JSON)
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == {
        "code": "body_too_large",
        "message": f"request body exceeds {MAX_BODY_BYTES} bytes",
        "max_bytes": MAX_BODY_BYTES,
    }
    await assert_unchanged(small_limit, before)
    # The app keeps serving after a refused stream.
    assert (await small_limit.patch("/models/tiny", json={"max_model_len": 8})).status_code == 200
