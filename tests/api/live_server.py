"""The app behind a real uvicorn on a free port, in a thread of this process, for clients that
need a socket (streams read as they come, a browser): tests still reach the app's state, and run
code on its event loop with `on_loop`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from tests.fakes import free_port, wait_until

T = TypeVar("T")


@dataclass
class LiveServer:
    app: FastAPI
    url: str
    loop: asyncio.AbstractEventLoop

    def on_loop(self, work: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run `work()` on the server's event loop (where the app's objects live) and return
        its result."""

        async def run() -> T:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)


@contextmanager
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        except BaseException as error:  # reported by the waiting thread
            failure.append(error)
        finally:
            # Tasks that outlive the server (sse-starlette's shutdown watcher) end with the loop.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))

    thread = threading.Thread(target=serve, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 60, what="uvicorn started")
    if not server.started:
        raise RuntimeError(f"uvicorn did not start: {failure or 'it exited'}")
    try:
        yield LiveServer(app=app, url=f"http://127.0.0.1:{port}", loop=loop)
    finally:
        server.should_exit = True
        thread.join(timeout=90)
        if not thread.is_alive():
            loop.close()


def sse_headers(token: str | None = None, last_event_id: int | None = None) -> dict[str, Any]:
    headers = {"Accept": "text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers
