"""Time as an injectable dependency: the lifecycle, backoff and monitor read it, tests swap it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, UTC, for records people read."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for durations and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def iso_ms(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as every timestamp in the API is written."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
