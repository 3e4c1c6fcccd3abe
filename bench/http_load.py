"""`python -m bench.http_load URL --body JSON [--header 'Name: value'] [--concurrency N]
[--max-requests M] [--duration-s T] [--ramp-s R] [--out FILE]`: a POST load client that costs
less than what it measures, run in its own process.

httpx spends ~0.45 ms of CPU per request on this kind of machine (one httpx client: 1,850 req/s
against the fake engine; this one: 12,000 at ~25 us of CPU each). On two cores that is more than
some of the proxies it would measure, so this client speaks HTTP/1.1 itself: uvloop, httptools'
parser (both come with uvicorn[standard]), the request bytes built once, one keep-alive
connection per concurrent client. It prints one JSON object: requests, errors, statuses,
duration_s, rps, latency_ms and, for streamed answers, ttfc_ms (request written -> first body
bytes that carry a token), tokens (token events received inside the measured window) and
tokens_per_s. A warm-up request per connection (`max_tokens` 1) opens the connections first;
`--ramp-s` spreads the clients' first requests over that long before the window opens.
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import uvloop

from bench.report import summary_ms

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# A token event in an OpenAI completions stream: vLLM, our relay and vllm-router pass the engine's
# events through; LiteLLM rewrites them and adds a last event without text, which is not counted.
TOKEN_MARKER = b'"text":'


@dataclass
class Stats:
    window_start: float = 0.0
    deadline: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    ttfc_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    window_tokens: int = 0


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `exchange` sends a request and waits for the answer."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.status = 0
        self.done_at = 0.0
        self.first_token_at: float | None = None
        self._tail = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        # The marker may straddle two reads: keep one byte less than it to count it exactly once.
        window = self._tail + body
        tokens = window.count(TOKEN_MARKER)
        self._tail = window[-(len(TOKEN_MARKER) - 1) :]
        if tokens:
            if self.first_token_at is None:
                self.first_token_at = now
            if self.stats.window_start <= now <= self.stats.deadline:
                self.stats.window_tokens += tokens

    def on_message_complete(self) -> None:
        self.done_at = time.perf_counter()
        if not self.parser.should_keep_alive():
            self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    async def exchange(self, payload: bytes) -> tuple[float, float, float | None]:
        """(when it was sent, latency, time to first token or None) of one request, in
        seconds."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.status, self.first_token_at, self._tail = 0, None, b""
        sent = time.perf_counter()
        self.transport.write(payload)
        await self.waiter
        first = None if self.first_token_at is None else self.first_token_at - sent
        return sent, self.done_at - sent, first


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    payload: bytes
    warmup_payload: bytes

    async def connect(self, stats: Stats) -> Connection:
        loop = asyncio.get_running_loop()
        _transport, connection = await loop.create_connection(
            lambda: Connection(stats), self.host, self.port
        )
        return connection


def build_request(url: str, body: dict[str, Any], headers: list[str]) -> bytes:
    parts = urlsplit(url)
    content = json.dumps(body).encode()
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(content)}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


async def _warm(target: Target, stats: Stats) -> Connection:
    connection = await target.connect(stats)
    await connection.exchange(target.warmup_payload)
    if connection.status != 200:
        raise RuntimeError(f"warm-up request answered {connection.status}")
    return connection


async def _client(
    connection: Connection, target: Target, stats: Stats, budget: list[int], delay_s: float
) -> None:
    await asyncio.sleep(delay_s)
    while budget[0] > 0 and time.perf_counter() < stats.deadline:
        budget[0] -= 1
        if connection.closed:
            connection = await target.connect(stats)
        try:
            sent, latency_s, first_s = await connection.exchange(target.payload)
        except (ConnectionError, httptools.HttpParserError):
            stats.errors += 1
            connection.closed = True
            continue
        stats.statuses[connection.status] = stats.statuses.get(connection.status, 0) + 1
        if connection.status != 200:
            stats.errors += 1
            continue
        if sent < stats.window_start:
            continue  # sent during the ramp: not part of the measured window
        stats.latencies_s.append(latency_s)
        if first_s is not None:
            stats.ttfc_s.append(first_s)
    if connection.transport is not None:
        connection.transport.close()


async def measure(
    target: Target, *, concurrency: int, max_requests: int, duration_s: float, ramp_s: float = 0.0
) -> dict[str, Any]:
    stats = Stats()  # deadline 0 until the clock starts: warm-up tokens are not counted
    # Every connection is open and warm before the clock starts.
    connections = await asyncio.gather(*(_warm(target, stats) for _ in range(concurrency)))
    budget = [max_requests]
    # With a ramp, client i starts i/N of the way through it, and the window opens once all
    # run: streams of equal length started together would stay in phase and reach a proxy in
    # bursts of N at every turn, which steady traffic does not.
    begin = time.perf_counter()
    stats.window_start = begin + ramp_s
    stats.deadline = stats.window_start + duration_s
    delays_s = [ramp_s * index / concurrency for index in range(concurrency)]
    await asyncio.gather(
        *(_client(c, target, stats, budget, d) for c, d in zip(connections, delays_s, strict=True))
    )
    elapsed_s = time.perf_counter() - stats.window_start
    window_s = min(elapsed_s, duration_s)
    done = len(stats.latencies_s)
    return {
        "requests": done,
        "errors": stats.errors,
        "statuses": {str(code): count for code, count in sorted(stats.statuses.items())},
        "concurrency": concurrency,
        "ramp_s": ramp_s,
        "duration_s": round(elapsed_s, 3),
        "rps": round(done / elapsed_s, 1) if elapsed_s else 0.0,
        "latency_ms": summary_ms(stats.latencies_s),
        "ttfc_ms": summary_ms(stats.ttfc_s) if stats.ttfc_s else None,
        "tokens": stats.window_tokens,
        "tokens_per_s": round(stats.window_tokens / window_s, 1) if window_s else 0.0,
        "latencies_s": stats.latencies_s,
        "ttfc_s": stats.ttfc_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_load")
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="the JSON request body")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument(
        "--ramp-s", type=float, default=0.0, help="spread the clients' starts over this long"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the result with every latency to this JSON file"
    )
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.hostname not in LOOPBACK_HOSTS or parts.port is None:
        parser.error("the load client only targets loopback addresses with a port")
    body = json.loads(args.body)
    target = Target(
        host=parts.hostname,
        port=parts.port,
        payload=build_request(args.url, body, args.header),
        warmup_payload=build_request(args.url, {**body, "max_tokens": 1}, args.header),
    )
    result = uvloop.run(
        measure(
            target,
            concurrency=args.concurrency,
            max_requests=args.max_requests,
            duration_s=args.duration_s,
            ramp_s=args.ramp_s,
        )
    )
    if args.out is not None:
        # A file, not stdout: tens of thousands of samples make a line long enough that a pipe
        # read back by the parent came out cut short.
        tmp_path = args.out.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(result))
        tmp_path.replace(args.out)
    del result["latencies_s"], result["ttfc_s"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
