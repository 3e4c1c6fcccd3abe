"""Streaming through the gateway of a real service (uvicorn), as agents see it: chunks pass as the
engine sends them, and a client that goes away stops the engine's work."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes import wait_until
from tests.gateway.conftest import spec
from tests.lifecycle.orchestrator_process import OrchestratorProcess, orchestrator_process


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def _engine_state(service: OrchestratorProcess) -> dict[str, object]:
    base_url = service.status("tiny")["base_url"]
    state: dict[str, object] = httpx.get(f"{base_url}/fake/state", timeout=5).json()
    return state


def test_gateway_stream_passes_each_chunk_as_the_engine_sends_it(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as service:
        service.client.post("/models", json=spec("tiny", "--token-interval-s", "0.3"))
        body = {"model": "tiny", "prompt": "x", "max_tokens": 5, "stream": True}
        service.client.post("/models/tiny/start")
        service.wait_state("tiny", "running")
        arrivals = []
        with service.client.stream("POST", "/v1/completions", json=body) as response:
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["content-type"].startswith("text/event-stream")
            for chunk in response.iter_raw():
                if chunk:
                    arrivals.append(time.monotonic())
        # Five tokens 0.3 s apart: a buffered relay would deliver them all at the end.
        assert len(arrivals) >= 5
        assert arrivals[-1] - arrivals[0] >= 0.9
        status = service.status("tiny")
        assert status["in_flight"] == 0 and status["last_request_at"] is not None


def test_gateway_client_disconnect_cancels_the_upstream_stream(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as service:
        service.client.post("/models", json=spec("tiny", "--token-interval-s", "0.05"))
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2000, "stream": True}
        client = httpx.Client(base_url=service.url, timeout=30)
        with client, client.stream("POST", "/v1/completions", json=body) as response:
            chunks = response.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)
            wait_until(lambda: service.status("tiny")["in_flight"] == 1, 5)
        # The response and its connection are closed here: the client is gone, mid-stream.
        gone_at = time.monotonic()
        wait_until(lambda: _engine_state(service)["streams_aborted"] == 1, 1.0)
        assert time.monotonic() - gone_at < 1.0
        wait_until(lambda: service.status("tiny")["in_flight"] == 0, 1.0)


def test_gateway_streams_through_the_openai_sdk(state_dir: Path) -> None:
    with orchestrator_process(state_dir) as service:
        service.client.post("/models", json=spec("tiny"))
        agent = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
        stream = agent.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
        assert "".join(piece or "" for piece in pieces) == " ok ok ok ok"
        with pytest.raises(openai.NotFoundError):
            agent.completions.create(model="missing", prompt="x")
