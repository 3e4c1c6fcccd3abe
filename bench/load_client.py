"""`python -m bench.load_client URL --concurrency N --max-requests M --max-duration-s T`:
an httpx-based async load generator, run in its own process so that its CPU is not the server's.

N clients share a keep-alive pool of N connections and each sends GET URL back to back. A short
warm-up (not counted) opens the connections first. The run stops at M requests or T seconds,
whichever comes first, and prints one JSON object: requests, errors, duration_s, rps, p50_ms,
p99_ms. Loopback only: it refuses any other host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import httpx

from bench.report import median, p99

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


async def _worker(
    client: httpx.AsyncClient,
    url: str,
    *,
    deadline: float,
    budget: list[int],
    latencies_s: list[float],
    errors: list[int],
) -> None:
    while budget[0] > 0 and time.perf_counter() < deadline:
        budget[0] -= 1
        sent = time.perf_counter()
        try:
            response = await client.get(url)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies_s.append(time.perf_counter() - sent)
        if not ok:
            errors[0] += 1


async def measure(
    url: str, *, concurrency: int, max_requests: int, max_duration_s: float
) -> dict[str, float | int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as client:
        # Warm-up: open every connection once, outside the measurement.
        await asyncio.gather(*(client.get(url) for _ in range(concurrency)))
        latencies_s: list[float] = []
        errors = [0]
        budget = [max_requests]
        started = time.perf_counter()
        deadline = started + max_duration_s
        await asyncio.gather(
            *(
                _worker(
                    client,
                    url,
                    deadline=deadline,
                    budget=budget,
                    latencies_s=latencies_s,
                    errors=errors,
                )
                for _ in range(concurrency)
            )
        )
        duration_s = time.perf_counter() - started
    return {
        "requests": len(latencies_s),
        "errors": errors[0],
        "duration_s": round(duration_s, 3),
        "rps": round(len(latencies_s) / duration_s, 1),
        "p50_ms": round(median(latencies_s) * 1000, 2),
        "p99_ms": round(p99(latencies_s) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_client")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--max-duration-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in LOOPBACK_HOSTS:
        parser.error("the load client only targets loopback addresses")
    result = asyncio.run(
        measure(
            args.url,
            concurrency=args.concurrency,
            max_requests=args.max_requests,
            max_duration_s=args.max_duration_s,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
