"""Passing an engine's response through to the client as it arrives.

`RelayResponse` streams the upstream body chunk by chunk (no buffering: the first chunk leaves
when the engine sends it) and listens for the client's disconnect at the same time, whatever ASGI
version the server speaks: a client that goes away closes the upstream request at once, so the
engine stops generating for nobody, even while it sends nothing. `close` runs on every way out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

Cleanup = Callable[[], Awaitable[None]]


class RelayResponse(StreamingResponse):
    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        status_code: int,
        headers: dict[str, str],
        cleanup: Cleanup,
    ) -> None:
        super().__init__(chunks, status_code=status_code, headers=headers)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def relay() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                async def watch_disconnect() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(relay)
                group.start_soon(watch_disconnect)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()
