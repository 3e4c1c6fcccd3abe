"""The registry: specs, statuses and events, as the domain sees them. All SQL goes through here
to app/store.

Writes run on one thread of their own, in the order they were made: a busy SQLite (its busy
timeout, the retries below) then waits there, never on the event loop that every supervisor,
probe and request shares. Status writes are queued without waiting (the supervisor holds the
status in memory); `flush` waits until everything queued so far is committed, and the
supervisor awaits it before any side effect that must find its record on disk (a spawn) and
before it answers a command. Listeners hear of each event once it is committed, on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from app.orchestrator.clock import Clock
from app.orchestrator.spec import ModelSpec, spec_fields
from app.store import repository
from app.store.db import session_scope
from app.store.repository import AlreadyExistsError
from app.store.tables import EventRow, ModelRow, StatusRow

T = TypeVar("T")
_LOCK_RETRIES = 5
_TOLD_KEPT = 10_000
EventListener = Callable[[EventRow], None]

logger = logging.getLogger(__name__)

__all__ = ["AlreadyExistsError", "EventListener", "Registry", "StoredSpecInvalidError"]


class StoredSpecInvalidError(Exception):
    """A stored spec breaks a rule added since it was stored; the service will not guess."""


def spec_from_row(row: ModelRow) -> ModelSpec:
    data = row.model_dump(exclude={"source", "created_at", "updated_at"})
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        # Starting with it would launch what the rules now refuse (say, -pp in extra_args,
        # which placement does not count); dropping it would lose the model. Say which.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise StoredSpecInvalidError(
            f"stored spec of model {row.id!r} is no longer valid ({problems}); fix the row "
            "(or the manifest it came from) and start again: docs/operations/runbook.md"
        ) from None


def _copy_status(status: StatusRow) -> StatusRow:
    # The supervisor keeps changing its copy; the writer thread persists the values of now.
    return StatusRow(**status.model_dump())


class Registry:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._last_write: Future[Any] | None = None
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called inside every write of one model's spec or status, in its transaction: raises
        # when this node may not write the model (it does not hold its lease; cluster/leases.py).
        self.fence: Callable[[Session, str], None] | None = None
        # Ids of the events told to the listeners lately: each is told once.
        self._told: OrderedDict[int, None] = OrderedDict()

    # -- plumbing ---------------------------------------------------------------------------
    def _run(self, work: Callable[[Session], T]) -> T:
        """One transaction, retried while SQLite says locked or PostgreSQL rolled it back for a
        deadlock or a serialization failure (row locks of leases taken in different orders).
        Runs on the writer thread (or, for reads, wherever the caller runs them: WAL readers
        never wait for a writer)."""
        for attempt in range(_LOCK_RETRIES):
            try:
                with session_scope(self.engine) as session:
                    return work(session)
            except OperationalError as error:
                if not _retryable(error) or attempt == _LOCK_RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _transaction(self, work: Callable[[Session, list[EventRow]], T]) -> T:
        """Run `work` in one write transaction; tell the listeners of the events it appended
        only once they are committed."""
        events: list[EventRow] = []

        def attempt(session: Session) -> T:
            events.clear()  # a retried attempt appends its events anew
            return work(session, events)

        result = self._run(attempt)
        self._committed(events)
        return result

    def _submit(self, work: Callable[[Session, list[EventRow]], T]) -> Future[T]:
        with_loop = self._running_loop()
        future = self._writer.submit(self._transaction, work)
        future.add_done_callback(_log_failure)
        self._last_write = future
        if with_loop is None:
            future.result()  # no loop (a script, a sync test): write through
        return future

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._loop

    async def _write(self, work: Callable[[Session, list[EventRow]], T]) -> T:
        return await asyncio.wrap_future(self._submit(work))

    async def flush(self) -> None:
        """Wait until every write queued so far is committed (or has failed, and said so)."""
        last = self._last_write
        if last is not None and not last.done():
            await asyncio.wrap_future(last)
        elif last is not None:
            last.result()

    def close(self) -> None:
        """Finish the queued writes, then stop the writer thread."""
        self._writer.shutdown(wait=True)

    def _fence(self, session: Session, model_id: str) -> None:
        if self.fence is not None:
            self.fence(session, model_id)

    # -- listeners --------------------------------------------------------------------------
    def add_listener(self, listener: EventListener) -> None:
        """Call `listener(event)` on the event loop after each event is committed."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _committed(self, events: list[EventRow]) -> None:
        # Runs on the writer thread, after the commit; the rows are detached with their ids.
        loop = self._loop
        if not events or not self._listeners or loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._notify, events)

    def deliver(self, events: list[EventRow]) -> None:
        """Tell the listeners of events other nodes committed (cluster/event_relay.py); on the
        loop. An event already told (this node's own, or read twice) is not told again."""
        self._notify(events)

    def _notify(self, events: list[EventRow]) -> None:
        for event in events:
            if event.id is not None:
                if event.id in self._told:
                    continue
                self._told[event.id] = None
                if len(self._told) > _TOLD_KEPT:
                    self._told.popitem(last=False)
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # one broken listener must not silence the others
                    logger.exception("event listener %r failed", listener)

    # -- specs ------------------------------------------------------------------------------
    async def create(
        self,
        spec: ModelSpec,
        *,
        source: str = "api",
        claim: Callable[[Session, str], None] | None = None,
    ) -> StatusRow:
        """Insert the spec and its initial status; returns that status. `claim(session, id)`
        runs in the same transaction (the creating node takes the model's lease with it)."""
        now = self.clock.now()

        def work(session: Session, events: list[EventRow]) -> StatusRow:
            repository.create_model(
                session=session, fields=spec_fields(spec), source=source, now=now
            )
            if claim is not None:
                session.flush()  # the lease row refers to the model row
                claim(session, spec.id)
            events.append(
                repository.append_event(
                    session=session, model_id=spec.id, kind="created", at=now, reason=source
                )
            )
            session.flush()
            status = repository.get_status(session=session, model_id=spec.id)
            assert status is not None
            return status

        return await self._write(work)

    async def update(self, spec: ModelSpec, *, source: str = "api") -> bool:
        now = self.clock.now()

        def work(session: Session, events: list[EventRow]) -> bool:
            self._fence(session, spec.id)
            updated = repository.update_model(
                session=session, fields=spec_fields(spec), source=source, now=now
            )
            if updated:
                events.append(
                    repository.append_event(
                        session=session, model_id=spec.id, kind="updated", at=now, reason=source
                    )
                )
            return updated

        return await self._write(work)

    async def delete(self, model_id: str) -> bool:
        now = self.clock.now()

        def work(session: Session, events: list[EventRow]) -> bool:
            self._fence(session, model_id)
            deleted = repository.delete_model(session=session, model_id=model_id)
            if deleted:
                events.append(
                    repository.append_event(
                        session=session, model_id=model_id, kind="deleted", at=now
                    )
                )
            return deleted

        return await self._write(work)

    def spec(self, model_id: str) -> ModelSpec | None:
        row = self._run(lambda session: repository.get_model(session=session, model_id=model_id))
        return None if row is None else spec_from_row(row)

    def specs(self) -> list[ModelSpec]:
        rows = self._run(lambda session: repository.list_models(session=session))
        return [spec_from_row(row) for row in rows]

    # -- statuses and events ----------------------------------------------------------------
    def status(self, model_id: str) -> StatusRow | None:
        return self._run(lambda session: repository.get_status(session=session, model_id=model_id))

    def statuses(self) -> dict[str, StatusRow]:
        rows = self._run(lambda session: repository.list_statuses(session=session))
        return {row.model_id: row for row in rows}

    def save_status(
        self,
        status: StatusRow,
        *,
        event: dict[str, Any] | None = None,
        on_commit: Callable[[StatusRow], None] | None = None,
    ) -> None:
        """Queue the status and, in the same transaction, the event that explains it.
        `on_commit(snapshot)` runs on the event loop once that is committed."""
        snapshot = _copy_status(status)
        at = self.clock.now()

        def work(session: Session, events: list[EventRow]) -> None:
            self._fence(session, snapshot.model_id)
            repository.save_status(session=session, status=snapshot)
            if event is not None:
                events.append(
                    repository.append_event(
                        session=session, model_id=snapshot.model_id, at=at, **event
                    )
                )

        future = self._submit(work)
        if on_commit is not None:
            self._after(future, lambda: on_commit(snapshot))

    def _after(self, future: Future[Any], callback: Callable[[], None]) -> None:
        """Run `callback` on the loop once `future` has succeeded (at once without a loop)."""
        loop = self._loop

        def done(finished: Future[Any]) -> None:
            if finished.cancelled() or finished.exception() is not None:
                return
            if loop is None or loop.is_closed():
                callback()
            else:
                loop.call_soon_threadsafe(callback)

        if self._running_loop() is None:
            loop = None
        future.add_done_callback(done)

    def append_event(self, model_id: str | None, kind: str, **fields: Any) -> None:
        """Queue an event of its own (an alert, a manifest reload)."""
        now = self.clock.now()

        def work(session: Session, events: list[EventRow]) -> None:
            events.append(
                repository.append_event(
                    session=session, model_id=model_id, kind=kind, at=now, **fields
                )
            )

        self._submit(work)

    def events(self, model_id: str, *, limit: int) -> list[EventRow]:
        return self._run(
            lambda session: repository.list_events(session=session, model_id=model_id, limit=limit)
        )

    def last_event_id(self) -> int:
        return self._run(lambda session: repository.last_event_id(session=session))

    def events_after(
        self, after_id: int, *, model_id: str | None = None, limit: int = 1000
    ) -> list[EventRow]:
        """Events with an id above `after_id`, oldest first (a resumed event stream)."""
        return self._run(
            lambda session: repository.list_events_after(
                session=session, after_id=after_id, model_id=model_id, limit=limit
            )
        )


def _retryable(error: OperationalError) -> bool:
    rolled_back = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
    if isinstance(error.orig, rolled_back):
        return True  # PostgreSQL rolled it back: the whole transaction again
    return "is locked" in str(error)  # SQLite: database (or table) is locked, past its timeout


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("a store write failed", exc_info=future.exception())
